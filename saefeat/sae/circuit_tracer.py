"""Export per-layer transcoders as a transcoder set that circuit-tracer loads.

circuit-tracer (PyPI `circuit-tracer` 0.5; `circuit_tracer/transcoder/
single_layer_transcoder.py`, `utils/caching.py`) builds attribution graphs from one
transcoder per layer, every layer of the model from 0 up. Its folder, as its cache
(`save_transcoders_to_cache`) and its hub repos lay it out:

- `config.yaml`: `model_name` (the hub id its CLI loads when `--model` is not given),
  `model_kind: transcoder_set`, `feature_input_hook` and `feature_output_hook` (hooks
  *within* a TransformerLens block: `blocks.{L}.` is put in front of them), `scan` (the
  set's name in graph files). No `transcoders:` list: the loaders then take
  `layer_{i}.safetensors` beside the config (a listed path would be read from the
  working folder, not the config's);
- `layer_{i}.safetensors`, read by `load_relu_transcoder`: W_enc [d_sae, d_model] (the
  transpose of ours), W_dec [d_sae, d_model], b_enc [d_sae], b_dec [d_model], and
  optionally `activation_function.threshold` [d_sae] (the latents are then JumpReLU,
  pre * (pre > threshold); without it ReLU) and W_skip [d_model, d_model] (output +=
  x @ W_skip.T, as ours). Its encoder reads x as it is (no b_dec subtracted), like our
  transcoders. One width for input and output (d_model), one d_sae for every layer.

So an SAE exports only if it is a transcoder (`hook_out` set) whose output is as wide as
its input, and only ReLU or threshold latents: relu as ReLU, jumprelu with its threshold,
batchtopk and matryoshka_batchtopk with their stored inference threshold (clamped at 0,
which changes nothing: they threshold relu'd pre-activations). TopK has no per-latent
threshold and circuit-tracer's loader has no TopK: refused.

Hooks: our `blocks.L.ln2.hook_normalized` is what the MLP reads, the norm's output with
its weight applied; in circuit-tracer's models (TransformerLens with fold_ln=False) that
is `mlp.hook_in` (its wrapper around the MLP; TransformerLens's own `ln2.hook_normalized`
there is before the weight), and our `hook_mlp_out` is `mlp.hook_out`, the MLP's own
output (Gemma's `hook_mlp_out` comes after its post-MLP norm). Our `hook_mlp_in` is
`hook_resid_mid`. Llama and Qwen models take these on both of its backends; Gemma 2 only
on its TransformerLens one (its nnsight map names neither mlp hook).

To use the folder: `CIRCUIT_TRACER_CACHE_DIR=<parent> circuit-tracer attribute -t <name>`
(or `ReplacementModel.from_pretrained(model, "<name>")` with that variable set), where
`<parent>/<name>` is the folder: circuit-tracer looks in its cache before the hub. The
folder can also be pushed to a hub repo as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from saefeat.errors import SpecError
from saefeat.sae.base import SparseAutoencoder
from saefeat.sae.interop import _new_folder
from saefeat.shapes import check_transcoder_hooks, hub_model_id, parse_hook

CONFIG = "config.yaml"
# our hook kind -> circuit-tracer's hook within a block (module docstring)
TO_CIRCUIT_TRACER = {
    "ln2_normalized": "mlp.hook_in",
    "mlp_in": "hook_resid_mid",
    "mlp_out": "mlp.hook_out",
}
# architectures whose latents fire above a per-latent threshold (JumpReLU there)
THRESHOLDED = ("jumprelu", "batchtopk", "matryoshka_batchtopk")
SUPPORTED = ("relu", *THRESHOLDED)


def layer_file(layer: int) -> str:
    return f"layer_{layer}.safetensors"


def _tensors(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """One layer's file: our weights in circuit-tracer's names and orientation."""
    w = {k: v.detach().float().cpu() for k, v in sae.state_dict().items()}
    out = {"W_enc": w["W_enc"].t(), "W_dec": w["W_dec"], "b_enc": w["b_enc"],
           "b_dec": w["b_dec"]}  # fmt: skip
    if sae.cfg.architecture in THRESHOLDED:
        threshold = w["threshold"]
        if sae.cfg.architecture != "jumprelu":  # relu(p) > t is relu(p) for any t < 0
            threshold = threshold.clamp(min=0.0)
        out["activation_function.threshold"] = threshold
    if "W_skip" in w:
        out["W_skip"] = w["W_skip"]
    return {k: v.contiguous() for k, v in out.items()}


def _check_one(sae: SparseAutoencoder, name: str) -> tuple[int, str, str]:
    """(layer, input hook, output hook) of one transcoder, or a SpecError naming the field."""
    cfg = sae.cfg
    if not cfg.is_transcoder:
        raise SpecError(f"{name} is an SAE of {cfg.hook}, not a transcoder; circuit-tracer "
                        "loads transcoders only", field="hook_out")  # fmt: skip
    if cfg.architecture not in SUPPORTED:
        raise SpecError(f"{name} is {cfg.architecture!r}; circuit-tracer's transcoders are "
                        f"ReLU or JumpReLU: one of {list(SUPPORTED)}",
                        field="architecture")  # fmt: skip
    if cfg.out_dim != cfg.d_in:
        raise SpecError(f"{name} writes d_out={cfg.out_dim} from d_in={cfg.d_in}; "
                        "circuit-tracer's transcoders keep one width", field="d_out")  # fmt: skip
    check_transcoder_hooks(cfg.hook, cfg.hook_out)
    into, out = parse_hook(cfg.hook), parse_hook(cfg.hook_out)
    return into.layer, TO_CIRCUIT_TRACER[into.kind], TO_CIRCUIT_TRACER[out.kind]


def export_circuit_tracer(
    saes: Sequence[SparseAutoencoder],
    path: Path,
    *,
    model_name: str | None = None,
    scan: str | None = None,
    names: Sequence[str] | None = None,
    n_layers: int | None = None,
) -> Path:
    """Write transcoders, one per layer 0..N-1 in any order, as circuit-tracer's folder.
    `model_name` defaults to theirs (its hub id is written); `scan` to the folder's
    name; `names` (their ids) are what errors call them; `n_layers`, the model's, when
    known: circuit-tracer replaces every MLP, so a set must cover them all."""
    if not saes:
        raise SpecError("no transcoder to export", field="sae")
    names = list(names) if names is not None else [f"transcoder {i}" for i in range(len(saes))]
    by_layer: dict[int, SparseAutoencoder] = {}
    hooks: set[tuple[str, str]] = set()
    for sae, name in zip(saes, names, strict=True):
        layer, into, out = _check_one(sae, name)
        if layer in by_layer:
            raise SpecError(f"two transcoders of layer {layer}; circuit-tracer takes one a "
                            "layer", field="sae")  # fmt: skip
        by_layer[layer] = sae
        hooks.add((into, out))
    missing = sorted(set(range(max(by_layer) + 1)) - set(by_layer))
    if n_layers is not None and max(by_layer) + 1 < n_layers:
        missing += list(range(max(by_layer) + 1, n_layers))
    if missing:
        raise SpecError(f"no transcoder for layers {missing}; circuit-tracer needs one for "
                        f"every layer of the model (given: {sorted(by_layer)})",
                        field="sae")  # fmt: skip
    if len(hooks) > 1:
        spelled = sorted(f"{a} -> {b}" for a, b in hooks)
        raise SpecError(f"the transcoders read and write different hooks ({spelled}); "
                        "circuit-tracer's set has one pair", field="hook")  # fmt: skip
    for field in ("d_in", "d_sae", "skip_connection"):
        values = {getattr(s.cfg, field) for s in saes}
        if len(values) > 1:
            raise SpecError(f"the transcoders differ in {field} ({sorted(values)}); "
                            "circuit-tracer's set has one", field=field)  # fmt: skip
    models = {s.cfg.model for s in saes} - {None}
    if model_name is None and len(models) > 1:
        raise SpecError(f"the transcoders name different models ({sorted(models)})",
                        field="model")  # fmt: skip
    model = model_name or (models.pop() if models else None)
    path = _new_folder(path)
    into, out = hooks.pop()
    config = {
        "model_name": hub_model_id(model) if model else None,
        "model_kind": "transcoder_set",
        "feature_input_hook": into,
        "feature_output_hook": out,
        "scan": scan or path.resolve().name,
        "saefeat_model": model,  # the name saefeat loads it by; circuit-tracer ignores it
    }
    for layer, sae in sorted(by_layer.items()):
        save_file(_tensors(sae), str(path / layer_file(layer)), metadata={"format": "pt"})
    # JSON scalars are YAML: no YAML writer needed for these flat keys
    (path / CONFIG).write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    return path
