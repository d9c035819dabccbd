"""Revision 0009 (contrast runs and their features) on SQLite and PostgreSQL: the rows a
contrast writes, read back as the top features of each side; replaced on rerun; gone
with their SAE and with a downgrade to 0004."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sqlalchemy import inspect, select

from saefeat.analysis.contrast import ContrastResult
from saefeat.analysis.contrast_classifier import ClassifierResult
from saefeat.analysis.contrast_stats import SideCounts, contrast_statistics
from saefeat.specs import ContrastSpec
from saefeat.storage.catalog.contrasts import (
    ContrastFeature,
    ContrastRun,
    get_contrast,
    top_features,
    write_contrast,
)
from saefeat.storage.catalog.db import downgrade, make_engine, upgrade
from saefeat.storage.catalog.models import SAE


def _side(rng: np.random.Generator, rates: np.ndarray) -> SideCounts:
    """200 documents of 64 tokens; feature f fires on a token with probability rates[f]."""
    fires = rng.random((200, 64, rates.size)) < rates
    return SideCounts(
        np.full(200, 64), sp.csr_matrix(fires.sum(1) * 1.0), sp.csr_matrix(fires.sum(1) * 2.0),
        sp.csr_matrix(fires[:, :32].any(1) * 1.0), 32,
    )  # fmt: skip


def _result(sae_id: str) -> ContrastResult:
    rng = np.random.default_rng(0)
    rates_a, rates_b = np.full(40, 0.01), np.full(40, 0.01)
    rates_a[:3], rates_b[3:6], rates_a[39] = 0.08, 0.08, 0.0
    rates_b[39] = 0.0  # feature 39 never fires: no row
    stats = contrast_statistics(_side(rng, rates_a), _side(rng, rates_b))
    spec = ContrastSpec(sae=sae_id, a="as-a", b="as-b")
    return ContrastResult(
        spec.contrast_id(), spec, stats, ClassifierResult(0.97, [0, 1, 2], 280, 120), 1.5, 1.0
    )


def test_contrast_rows_round_trip_and_cascade(session, make_sae):
    sae = make_sae(session, d_sae=40)
    result = _result(sae.id)
    write_contrast(session, result)
    session.commit()
    write_contrast(session, result)  # a rerun replaces, never duplicates
    session.commit()
    run = get_contrast(session, result.contrast_id)
    assert run.auroc == 0.97 and run.classifier_features == [0, 1, 2]
    st = result.stats
    assert run.n_significant_a == len(st.ranked("a", 0.05, 40)) >= 3
    assert run.n_significant_b == len(st.ranked("b", 0.05, 40)) >= 3
    assert len(session.scalars(select(ContrastFeature)).all()) == 39
    top_a = top_features(session, run, "a", 10)
    assert [r.feature_index for r in top_a] == [int(f) for f in result.stats.ranked("a", 0.05, 10)]
    top_b = {r.feature_index for r in top_features(session, run, "b", 10)}
    assert top_b == set(st.ranked("b", 0.05, 10).tolist()) >= {3, 4, 5}
    assert top_a[0].stats["p"] == result.stats.p[top_a[0].feature_index]
    session.delete(session.get(SAE, sae.id))
    session.commit()
    assert session.scalars(select(ContrastRun)).first() is None
    assert session.scalars(select(ContrastFeature)).first() is None


def test_0009_downgrades_to_0004_and_back(db_url):
    downgrade(db_url, "0004")
    engine = make_engine(db_url)
    assert not {"contrasts", "contrast_features"} & set(inspect(engine).get_table_names())
    engine.dispose()
    upgrade(db_url)
    engine = make_engine(db_url)
    assert {"contrasts", "contrast_features"} <= set(inspect(engine).get_table_names())
    engine.dispose()
