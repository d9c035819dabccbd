"""Out-of-core statistics of an activation set, with dask over the committed shards."""

from __future__ import annotations

import dask.array as da
import numpy as np

from saefeat.storage.activations import ActivationSet, bf16_bits_to_float32
from saefeat.storage.exclusion import DEFAULT_THRESHOLD, row_norms

NORM_QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def _as_float32(block: np.ndarray, storage_dtype: str) -> np.ndarray:
    if storage_dtype == "bfloat16":
        return bf16_bits_to_float32(block)
    return block.astype(np.float32)


def hook_statistics(
    aset: ActivationSet,
    hook: str,
    *,
    skip_first_position: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict:
    """Mean/variance per dimension, norm quantiles and the unit-mean-squared-norm scale.

    Contexts dropped for NaN/Inf are left out. Position 0 of every context is left out
    when asked: its residual is an attention sink with a norm tens of times the rest. The
    norm quantiles (whose median the token rule of exclusion.py reads) cover every other
    row; the mean, variance and scale cover the typical ones only, the rows whose norm is
    at most `threshold` x that median, so a few massive tokens cannot set the scale.
    """
    arr = aset.acts_array(hook)
    shard_rows = aset.contexts_per_shard * aset.ctx_len
    committed = aset.committed_shards()
    if not committed:
        raise ValueError(f"set {aset.id} has no committed shards to compute statistics over")
    all_norms = row_norms(aset, hook, refresh=True)
    keeps = {}
    for s in committed:
        r0, _ = aset.shard_rows(s)
        keeps[s] = aset.kept_rows(s, skip_first_position=skip_first_position)
    norms = np.concatenate([all_norms[aset.shard_rows(s)[0] + keeps[s]] for s in committed])
    if not np.isfinite(norms).all():
        raise ValueError(f"set {aset.id}, {hook}: activations contain NaN or Inf")
    median = float(np.quantile(norms, 0.5))
    limit = threshold * median
    pieces, n_massive = [], 0
    for s in committed:
        r0, r1 = aset.shard_rows(s)
        keep = keeps[s]
        typical = keep[all_norms[r0 + keep] <= limit]
        n_massive += len(keep) - len(typical)
        x = da.from_zarr(arr, chunks=(shard_rows, aset.d_model))[r0:r1]
        x = x.map_blocks(_as_float32, aset.storage_dtype, dtype=np.float32)
        if len(typical) < r1 - r0:  # first positions, dropped contexts, massive tokens
            x = x[typical]
        pieces.append(x)
    x = da.concatenate(pieces, axis=0)
    mean = x.mean(axis=0, dtype=np.float32)
    var = x.var(axis=0, dtype=np.float32)
    mean_sq_norm = (x * x).sum(axis=1).mean()
    mean, var, mean_sq_norm = da.compute(mean, var, mean_sq_norm)
    return {
        "n_rows": int(norms.shape[0]),
        "mean": mean.astype(float).tolist(),
        "var": var.astype(float).tolist(),
        "mean_norm": float(norms.mean()),
        "norm_quantiles": {str(q): float(np.quantile(norms, q)) for q in NORM_QUANTILES},
        # multiply activations by this to get unit mean squared norm
        "scale": float(1.0 / np.sqrt(mean_sq_norm)),
        "skip_first_position": skip_first_position,
        # the token rule the mean, var and scale were computed under
        "token_rule": {"threshold": threshold, "median_norm": median, "massive": n_massive},
    }


def set_statistics(aset: ActivationSet) -> dict:
    return {hook: hook_statistics(aset, hook) for hook in aset.hooks}
