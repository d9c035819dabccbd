"""A small synthetic activation set: sparse sums of fixed directions, so SAEs can learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saefeat.storage.activations import ActivationSet
from saefeat.storage.stats import set_statistics

D, CTX, N_CTX, PER_SHARD = 16, 8, 48, 8
HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def synthetic_rows(
    n: int, seed: int, n_dirs: int = 40, active: int = 3, d: int = D
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, d, generator=g)
    coef = torch.zeros(n, n_dirs)
    pick = torch.rand(n, n_dirs, generator=g).argsort(1)[:, :active]
    coef.scatter_(1, pick, torch.rand(n, active, generator=g) * 3 + 0.5)
    return coef @ dirs + 2.0


def make_set(
    root, set_id: str = "as-synthetic", model: str = "synthetic", d: int = D,
    massive: dict[int, list[tuple[int, int]]] | None = None,
) -> ActivationSet:  # fmt: skip
    """`massive`: {hook index: [(context, position)]} rows made 100x larger there."""
    tokens = np.random.default_rng(0).integers(0, 100, (N_CTX, CTX))
    aset = ActivationSet.create(
        root / f"{set_id}.zarr", set_id=set_id, spec={"model": model}, model=model, hooks=HOOKS,
        d_model=d, tokens=tokens, doc_index=np.zeros(N_CTX), doc_offset=np.zeros(N_CTX),
        doc_ids=["d"], contexts_per_shard=PER_SHARD, storage_dtype="float32",
    )  # fmt: skip
    rows = {h: synthetic_rows(N_CTX * CTX, seed=i, d=d) for i, h in enumerate(HOOKS)}
    for i, where in (massive or {}).items():
        for c, p in where:
            rows[HOOKS[i]][c * CTX + p] *= 100
    for shard in range(aset.n_shards):
        r0, r1 = aset.shard_rows(shard)
        aset.write_shard(shard, {h: x[r0:r1] for h, x in rows.items()})
    aset.mark_complete(set_statistics(aset))
    return aset


@pytest.fixture
def synthetic_set(settings) -> ActivationSet:
    settings.activations_dir.mkdir(parents=True, exist_ok=True)
    return make_set(settings.activations_dir)
