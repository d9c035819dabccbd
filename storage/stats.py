"""Out-of-core statistics of an activation set, with dask over the committed shards."""

from __future__ import annotations

import dask.array as da
import numpy as np

from saefeat.storage.activations import ActivationSet, bf16_bits_to_float32

NORM_QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def _as_float32(block: np.ndarray, storage_dtype: str) -> np.ndarray:
    if storage_dtype == "bfloat16":
        return bf16_bits_to_float32(block)
    return block.astype(np.float32)


def hook_statistics(aset: ActivationSet, hook: str, *, skip_first_position: bool = True) -> dict:
    """Mean/variance per dimension, norm quantiles and the unit-mean-squared-norm scale.

    Contexts dropped for NaN/Inf are left out. Position 0 of every context is left out
    when asked: its residual is an attention sink with a norm tens of times the rest, and
    would dominate the scale.
    """
    arr = aset.acts_array(hook)
    shard_rows = aset.contexts_per_shard * aset.ctx_len
    committed = aset.committed_shards()
    if not committed:
        raise ValueError(f"set {aset.id} has no committed shards to compute statistics over")
    pieces = []
    for s in committed:
        r0, r1 = aset.shard_rows(s)
        x = da.from_zarr(arr, chunks=(shard_rows, aset.d_model))[r0:r1]
        x = x.map_blocks(_as_float32, aset.storage_dtype, dtype=np.float32)
        keep = aset.kept_rows(s, skip_first_position=skip_first_position)
        if len(keep) < r1 - r0:  # first positions or dropped (NaN/Inf) contexts
            x = x[keep]
        pieces.append(x)
    x = da.concatenate(pieces, axis=0)
    mean = x.mean(axis=0, dtype=np.float32)
    var = x.var(axis=0, dtype=np.float32)
    sq_norm = (x * x).sum(axis=1)
    mean_sq_norm = sq_norm.mean()
    finite = da.isfinite(x).all()
    mean, var, mean_sq_norm, sq_norm, finite = da.compute(mean, var, mean_sq_norm, sq_norm, finite)
    if not finite:
        raise ValueError(f"set {aset.id}, {hook}: activations contain NaN or Inf")
    norms = np.sqrt(sq_norm)
    return {
        "n_rows": int(norms.shape[0]),
        "mean": mean.astype(float).tolist(),
        "var": var.astype(float).tolist(),
        "mean_norm": float(norms.mean()),
        "norm_quantiles": {str(q): float(np.quantile(norms, q)) for q in NORM_QUANTILES},
        # multiply activations by this to get unit mean squared norm
        "scale": float(1.0 / np.sqrt(mean_sq_norm)),
        "skip_first_position": skip_first_position,
    }


def set_statistics(aset: ActivationSet) -> dict:
    return {hook: hook_statistics(aset, hook) for hook in aset.hooks}
