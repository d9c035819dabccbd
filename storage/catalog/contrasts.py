"""Contrast results in the catalog (revision 0009): one row per run, one per feature.

A run's id is its spec's hash (`ContrastSpec.contrast_id`); writing a run again replaces
its rows in one transaction. Only features that fired in either set get a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Boolean, Float, ForeignKey, Index, String, delete, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from saefeat.storage.catalog.models import Base, utcnow

STAT_COLUMNS = (
    "token_rate_a", "token_rate_b", "doc_rate_a", "doc_rate_b", "window_rate_a",
    "window_rate_b", "mean_act_a", "mean_act_b", "mean_act_diff", "log_ratio", "z", "p", "q",
)  # fmt: skip


class ContrastRun(Base):
    __tablename__ = "contrasts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sae_id: Mapped[str] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"), index=True)
    set_a: Mapped[str] = mapped_column(String(64))
    set_b: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    n_tokens_a: Mapped[int]
    n_tokens_b: Mapped[int]
    n_docs_a: Mapped[int]
    n_docs_b: Mapped[int]
    n_window_docs_a: Mapped[int]
    n_window_docs_b: Mapped[int]
    n_significant_a: Mapped[int]
    n_significant_b: Mapped[int]
    auroc: Mapped[float | None] = mapped_column(Float)
    classifier_features: Mapped[list[Any]] = mapped_column(default=list)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ContrastFeature(Base):
    __tablename__ = "contrast_features"

    contrast_id: Mapped[str] = mapped_column(
        ForeignKey("contrasts.id", ondelete="CASCADE"), primary_key=True
    )
    feature_index: Mapped[int] = mapped_column(primary_key=True)
    side: Mapped[str] = mapped_column(String(1))  # the set where it fires more (window)
    token_rate_a: Mapped[float] = mapped_column(Float)
    token_rate_b: Mapped[float] = mapped_column(Float)
    doc_rate_a: Mapped[float] = mapped_column(Float)
    doc_rate_b: Mapped[float] = mapped_column(Float)
    window_rate_a: Mapped[float] = mapped_column(Float)
    window_rate_b: Mapped[float] = mapped_column(Float)
    mean_act_a: Mapped[float] = mapped_column(Float)
    mean_act_b: Mapped[float] = mapped_column(Float)
    mean_act_diff: Mapped[float] = mapped_column(Float)
    log_ratio: Mapped[float] = mapped_column(Float)
    z: Mapped[float] = mapped_column(Float)
    p: Mapped[float] = mapped_column(Float)
    q: Mapped[float] = mapped_column(Float)
    fisher: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (Index(None, "contrast_id", "side", "log_ratio"),)


@dataclass
class ContrastFeatureView:
    feature_index: int
    side: str
    stats: dict[str, float]
    fisher: bool


# The statistics' counts per side, stored as they are.
SIDE_COUNTS = ("n_tokens_a", "n_tokens_b", "n_docs_a", "n_docs_b", "n_window_docs_a",
               "n_window_docs_b")  # fmt: skip


def write_contrast(session: Session, result) -> ContrastRun:
    """Store a ContrastResult (saefeat.analysis.contrast), replacing an earlier run of the
    same spec. The caller commits."""
    st, spec = result.stats, result.spec
    session.execute(delete(ContrastRun).where(ContrastRun.id == result.contrast_id))
    run = ContrastRun(
        id=result.contrast_id,
        sae_id=spec.sae,
        set_a=spec.a,
        set_b=spec.b,
        spec=spec.model_dump(mode="json"),
        **{count: getattr(st, count) for count in SIDE_COUNTS},
        n_significant_a=len(st.ranked("a", spec.alpha, st.d_sae)),
        n_significant_b=len(st.ranked("b", spec.alpha, st.d_sae)),
        auroc=result.classifier.auroc,
        classifier_features=result.classifier.features,
        seconds=result.seconds,
    )
    session.add(run)
    session.flush()
    fired = np.flatnonzero((st.token_rate_a > 0) | (st.token_rate_b > 0))
    side = np.where(st.window_rate_a >= st.window_rate_b, "a", "b")
    columns = {c: getattr(st, c)[fired].astype(float).tolist() for c in STAT_COLUMNS}
    rows = [
        {
            "contrast_id": run.id,
            "feature_index": int(f),
            "side": str(side[f]),
            "fisher": bool(st.fisher[f]),
            **{c: columns[c][i] for c in STAT_COLUMNS},
        }
        for i, f in enumerate(fired)
    ]
    if rows:
        session.execute(insert(ContrastFeature), rows)
    return run


def get_contrast(session: Session, contrast_id: str) -> ContrastRun | None:
    return session.get(ContrastRun, contrast_id)


def top_features(
    session: Session, run: ContrastRun, side: str, limit: int
) -> list[ContrastFeatureView]:
    """Significant features (q < the run's alpha) that fire more in `side`, strongest
    log-ratio toward that side first."""
    alpha = float(run.spec.get("alpha", 0.05))
    order = ContrastFeature.log_ratio.desc() if side == "a" else ContrastFeature.log_ratio.asc()
    query = (
        select(ContrastFeature)
        .where(
            ContrastFeature.contrast_id == run.id,
            ContrastFeature.side == side,
            ContrastFeature.q < alpha,
        )
        .order_by(order, ContrastFeature.feature_index)
        .limit(limit)
    )
    return [
        ContrastFeatureView(
            r.feature_index, r.side, {c: getattr(r, c) for c in STAT_COLUMNS}, r.fisher
        )
        for r in session.scalars(query)
    ]
