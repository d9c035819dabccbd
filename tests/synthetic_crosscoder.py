"""A synthetic crosscoder in the catalog (two models' layer 6, as a paired harvest's): its
SAE row names both sources, and its index carries decoder norms per source, relative
norms (rounded, so some tie) and classes covering all three, without a model."""

from __future__ import annotations

from typing import Any

import numpy as np
from synthetic_catalog import register_test_sae, synthetic_feature_index

from saefeat.features.records import FeatureIndex
from saefeat.storage.catalog.writer import write_feature_index

HOOK = "blocks.6.hook_resid_post"
WIDTH = 576
SOURCES = [
    {"activation_set": "as-00000000000000a0", "hook": HOOK, "model": "model-a",
     "revision": None, "width": WIDTH},
    {"activation_set": "as-00000000000000b0", "hook": HOOK, "model": "model-b",
     "revision": None, "width": WIDTH},
]  # fmt: skip


def _sharing(rel: float) -> str:  # saefeat.sae.crosscoder.sharing, without torch
    return "a_only" if rel < 0.1 else "b_only" if rel > 0.9 else "shared"


def crosscoder_index(d_sae: int, seed: int = 0) -> FeatureIndex:
    """A synthetic index with crosscoder columns: the first features A-only, the next
    B-only, the rest shared; relative norms on a 0.05 grid (ties on the sort)."""
    rng = np.random.default_rng(seed)
    index = synthetic_feature_index(d_sae, n_examples=3, n_quantile=1, seed=seed,
                                    dead_fraction=0.0)  # fmt: skip
    rel = np.round(rng.uniform(0.1, 0.9, d_sae) * 20) / 20
    third = d_sae // 4
    rel[:third] = np.round(rng.uniform(0.0, 0.09, third), 2)
    rel[third : 2 * third] = np.round(rng.uniform(0.91, 1.0, third), 2)
    total = rng.uniform(0.5, 2.0, d_sae)
    index.decoder_norms = np.stack([total * (1 - rel), total * rel], 1)
    index.relative_norms = rel
    index.sharing = [_sharing(float(r)) for r in rel]
    return index


def register_crosscoder(session: Any, sae_id: str = "sae-x", d_sae: int = 40,
                        seed: int = 0) -> FeatureIndex:  # fmt: skip
    """Register and index the crosscoder (committed); returns what was written."""
    register_test_sae(session, sae_id, d_sae, name=f"crosscoder {sae_id}",
                      architecture="batchtopk", d_in=2 * WIDTH,
                      cfg={"sources": SOURCES, "train_spec": {"sources": SOURCES}})  # fmt: skip
    session.commit()
    index = crosscoder_index(d_sae, seed)
    write_feature_index(session, sae_id, index)
    session.commit()
    return index
