"""An SAEBench-compatible `core` evaluation record of one SAE.

The field names and nesting are SAEBench's core eval output (eval_type_id "core",
eval_result_metrics grouped as model_behavior_preservation, model_performance_preservation,
reconstruction_quality, shrinkage, sparsity, misc; eval_result_details one entry per
latent), so its plotting and comparison tools read it. The numbers are saefeat's held-out
evaluation on typical tokens (storage/exclusion.py), CE/KL with the SAE spliced in.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import torch

import saefeat
from saefeat.features.neighbours import decoder_neighbours
from saefeat.sae import SparseAutoencoder

EVAL_TYPE_ID = "core"


def _max_other_cosine(rows: torch.Tensor) -> torch.Tensor:
    """Each row's largest cosine with another row (blocked: no d_sae^2 matrix)."""
    _, cos = decoder_neighbours(rows.detach(), 1)
    return cos[:, 0]


def _freq_over(density: np.ndarray, level: float) -> tuple[float, float]:
    """(fraction of latents denser than level, their share of all firings)."""
    over = density > level
    total = density.sum()
    return float(over.mean()), float(density[over].sum() / total) if total else 0.0


@torch.no_grad()
def core_eval(
    sae: SparseAutoencoder, sae_id: str, heldout: dict, density: np.ndarray, spliced: dict,
    eval_config: dict,
) -> dict:  # fmt: skip
    """`heldout`: evaluate()'s metrics on held-out typical tokens; `density`: each latent's
    firing frequency there; `spliced`: model_evals' CE/KL (may be empty)."""
    W_enc, W_dec = sae.W_enc.detach().float().cpu(), sae.W_dec.detach().float().cpu()
    enc_rows = W_enc.t()  # [d_sae, d_in]
    max_enc = _max_other_cosine(enc_rows)
    max_dec = _max_other_cosine(W_dec)
    enc_dec = torch.nn.functional.cosine_similarity(enc_rows, W_dec, dim=1)
    f1, n1 = _freq_over(density, 0.01)
    f10, n10 = _freq_over(density, 0.1)
    sp = spliced
    metrics = {
        "model_behavior_preservation": {
            "kl_div_score": sp.get("kl_div_score"),
            "kl_div_with_ablation": sp.get("kl_div_zero_ablation"),
            "kl_div_with_sae": sp.get("kl_div_with_sae"),
        },
        "model_performance_preservation": {
            "ce_loss_score": sp.get("ce_loss_recovered"),
            "ce_loss_with_ablation": sp.get("ce_loss_zero_ablation"),
            "ce_loss_with_sae": sp.get("ce_loss_with_sae"),
            "ce_loss_without_sae": sp.get("ce_loss_clean"),
        },
        "reconstruction_quality": {k: heldout[k] for k in ("explained_variance", "mse", "cossim")},
        "shrinkage": {
            k: heldout[k]
            for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias")
        },
        "sparsity": {"l0": heldout["l0"], "l1": heldout["l1"]},
        "token_stats": {
            "total_tokens_eval_reconstruction": heldout["n_tokens"],
            "total_tokens_eval_sparsity_variance": heldout["n_tokens"],
        },
        "misc": {
            "freq_over_1_percent": f1,
            "freq_over_10_percent": f10,
            "normalized_freq_over_1_percent": n1,
            "normalized_freq_over_10_percent": n10,
            "average_max_encoder_cosine_sim": float(max_enc.mean()),
            "average_max_decoder_cosine_sim": float(max_dec.mean()),
            "frac_alive": float((density > 0).mean()),
        },
    }
    b_enc = sae.b_enc.detach().float().cpu()
    details = [
        {"index": i, "feature_density": float(density[i]), "encoder_bias": float(b_enc[i]),
         "encoder_norm": float(n), "encoder_decoder_cosine_sim": float(enc_dec[i]),
         "max_decoder_cosine_sim": float(max_dec[i]),
         "max_encoder_cosine_sim": float(max_enc[i])}
        for i, n in enumerate(enc_rows.norm(dim=1).tolist())
    ]  # fmt: skip
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": eval_config,
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details,
        "sae_bench_commit_hash": None,
        "sae_lens_id": sae_id,
        "sae_lens_release_id": "saefeat",
        "sae_lens_version": saefeat.__version__,
        "sae_cfg_dict": {
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            "architecture": sae.cfg.architecture,
            "k": sae.cfg.k,
            "model_name": sae.cfg.model,
            "hook_name": sae.cfg.hook,
        },
        "eval_result_unstructured": None,
    }
