"""Export to and import from the SAELens and sparsify checkpoint layouts.

SAELens (sae-lens 6.x, `SAE.save_model`): a folder with `cfg.json` (`architecture`
standard / topk / jumprelu, `d_in`, `d_sae`, `dtype`, `device`, `apply_b_dec_to_input`,
`normalize_activations`, `reshape_activations`, TopK's `k` and
`rescale_acts_by_decoder_norm`, `metadata` {model_name, hook_name, context_size, ...}) and
`sae_weights.safetensors` with W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec
(+ threshold [d_sae] for jumprelu). Our BatchTopK and Matryoshka SAEs infer as JumpReLU
with their stored threshold, so they export as jumprelu (as SAELens saves its own).

sparsify (eai-sparsify, `SparseCoder.save_to_disk`): one folder per hookpoint with
`cfg.json` (SparseCoderConfig's fields + `d_in`) and `sae.safetensors` with
encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec. TopK only.

Both compute relu / topk / jumprelu of (x - b_dec) @ W_enc + b_enc, as we do, so weights
map one to one; our input normalisation is already folded into the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saefeat.errors import NotFoundError, SpecError
from saefeat.sae.base import SAEConfig, SparseAutoencoder, sae_class

SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
# our architecture -> SAELens's (inference) architecture
TO_SAELENS = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu",
              "batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu"}  # fmt: skip
FROM_SAELENS = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu"}


def _weights(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in sae.state_dict().items()}


def _new_folder(path: Path) -> Path:
    path = Path(path)
    try:
        if path.exists() and any(path.iterdir()):
            raise SpecError(f"{path} exists and is not empty; refusing to overwrite", field="out")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the path, no permission
        raise SpecError(f"cannot create {path}: {e.strerror}", field="out") from None
    return path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise NotFoundError(f"no checkpoint at {path.parent} ({path.name} missing)")
    return json.loads(path.read_text())


# ---- SAELens ------------------------------------------------------------------------


def export_saelens(sae: SparseAutoencoder, path: Path, *, context_size: int | None = None,
                   prepend_bos: bool = True) -> Path:  # fmt: skip
    cfg = sae.cfg
    arch = TO_SAELENS[cfg.architecture]
    weights = _weights(sae)
    if arch != "jumprelu":
        weights.pop("threshold", None)
    out = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # our scale is folded into the weights
        "reshape_activations": "none",
        "metadata": {
            "model_name": cfg.model,
            "hook_name": cfg.hook,
            "hook_head_index": None,
            "context_size": context_size,
            "prepend_bos": prepend_bos,
            "saefeat_architecture": cfg.architecture,
            "saefeat_activation_set": cfg.activation_set,
        },
    }
    if arch == "topk":
        out |= {"k": cfg.k, "rescale_acts_by_decoder_norm": False}
    path = _new_folder(path)
    save_file(weights, str(path / SAELENS_WEIGHTS))
    (path / "cfg.json").write_text(json.dumps(out, indent=2))
    return path


def import_saelens(path: Path) -> SparseAutoencoder:
    path = Path(path)
    raw = _read_json(path / "cfg.json")
    arch = raw.get("architecture", "standard")
    if arch not in FROM_SAELENS:
        raise SpecError(f"SAELens architecture {arch!r} has no saefeat counterpart; "
                        f"known: {sorted(FROM_SAELENS)}", field="architecture")  # fmt: skip
    if raw.get("normalize_activations", "none") != "none":
        raise SpecError(
            f"normalize_activations={raw['normalize_activations']!r} scales inputs at run time "
            "with a factor the file does not hold; only 'none' can be imported",
            field="normalize_activations",
        )
    if raw.get("rescale_acts_by_decoder_norm"):
        raise SpecError("rescale_acts_by_decoder_norm=true is not supported",
                        field="rescale_acts_by_decoder_norm")  # fmt: skip
    meta = raw.get("metadata") or {}
    ours = FROM_SAELENS[arch]
    cfg = SAEConfig(d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), architecture=ours,
                    k=int(raw["k"]) if ours == "topk" else None,
                    model=meta.get("model_name", raw.get("model_name")),
                    hook=meta.get("hook_name", raw.get("hook_name")))  # fmt: skip
    w = {k: v.float() for k, v in load_file(str(path / SAELENS_WEIGHTS)).items()}
    if "log_threshold" in w:  # older SAELens JumpReLU training checkpoints
        w["threshold"] = w.pop("log_threshold").exp()
    if not raw.get("apply_b_dec_to_input", True):
        # relu(x W + b) == relu((x - b_dec) W + b + b_dec W): move b_dec into b_enc.
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    sae = sae_class(ours)(cfg)
    sae.load_state_dict({k: w[k] for k in sae.state_dict()})
    return sae.eval()


# ---- sparsify -----------------------------------------------------------------------


def export_sparsify(sae: SparseAutoencoder, path: Path) -> Path:
    cfg = sae.cfg
    if cfg.architecture != "topk":
        raise SpecError(f"sparsify holds TopK SAEs only, not {cfg.architecture!r}",
                        field="architecture")  # fmt: skip
    w = _weights(sae)
    tensors = {"encoder.weight": w["W_enc"].t().contiguous(), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}  # fmt: skip
    out = {
        "activation": "topk",
        "expansion_factor": max(1, cfg.d_sae // cfg.d_in),
        "normalize_decoder": True,
        "num_latents": cfg.d_sae,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": cfg.d_in,
    }
    path = _new_folder(path)
    save_file(tensors, str(path / SPARSIFY_WEIGHTS), metadata={"format": "pt"})
    (path / "cfg.json").write_text(json.dumps(out))
    return path


def import_sparsify(path: Path, *, model: str | None = None, hook: str | None = None
                    ) -> SparseAutoencoder:  # fmt: skip
    """sparsify's files name neither model nor hook (the folder is the hookpoint): pass
    them to keep the SAE indexable."""
    path = Path(path)
    raw = _read_json(path / "cfg.json")
    if raw.get("activation", "topk") != "topk":
        raise SpecError(f"sparsify activation {raw['activation']!r} is not supported; only "
                        "topk", field="activation")  # fmt: skip
    for flag in ("transcode", "skip_connection"):
        if raw.get(flag):
            raise SpecError(f"sparsify {flag}=true has no saefeat counterpart", field=flag)
    w = {k: v.float() for k, v in load_file(str(path / SPARSIFY_WEIGHTS)).items()}
    d_sae, d_in = w["encoder.weight"].shape
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=int(raw["k"]),
                    model=model, hook=hook)  # fmt: skip
    sae = sae_class("topk")(cfg)
    sae.load_state_dict({"W_enc": w["encoder.weight"].t().contiguous(), "b_enc": w["encoder.bias"],
                         "W_dec": w["W_dec"], "b_dec": w["b_dec"]})  # fmt: skip
    return sae.eval()
