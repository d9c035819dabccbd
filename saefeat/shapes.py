"""Rules on an SAE's names and sizes that every layer checks, without torch.

The hook-name grammar (TransformerLens and SAELens spell a hook `blocks.15.hook_resid_post`)
and the bound on active latents. The catalog checks both when it registers an SAE or
exports one, and must not import the model or the SAE modules (and torch) to do it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saefeat.errors import SpecError

HOOK_TYPES = ("resid_pre", "resid_post", "mlp_out", "attn_out")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|mlp_out|attn_out)$")


@dataclass(frozen=True)
class HookPoint:
    layer: int
    kind: str  # one of HOOK_TYPES

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"


def parse_hook(name: str) -> HookPoint:
    m = _HOOK_RE.match(name)
    if not m:
        raise SpecError(
            f"{name!r} is not a hook name; use blocks.<layer>.hook_<type> with type one of "
            + ", ".join(HOOK_TYPES),
            field="hooks",
        )
    return HookPoint(int(m.group(1)), m.group(2))


def check_active_count(k: int | None, d_sae: int) -> None:
    """The one rule for k: fewer active latents than there are latents."""
    if k is not None and not 0 < k < d_sae:
        raise SpecError(f"k must be < d_sae ({d_sae}) and > 0, got {k}", field="k")
