"""Feature labels: an append-only history, and the rule that picks the current one."""

from __future__ import annotations

import math
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.storage.catalog.models import LABEL_SOURCES, Feature, Label

MAX_LABEL_CHARS = 500


def add_label(
    session: Session,
    feature: Feature,
    *,
    text: str,
    source: str = "human",
    author: str | None = None,
    score: float | None = None,
) -> Label:
    """Append a label to `feature`'s history (labels are never edited). The caller commits."""
    text = text.strip()
    if not text:
        raise SpecError("must not be blank", field="text")
    if len(text) > MAX_LABEL_CHARS:
        raise SpecError(f"has {len(text)} characters; at most {MAX_LABEL_CHARS}", field="text")
    if source not in LABEL_SOURCES:
        raise SpecError(f"is {source!r}; use one of {list(LABEL_SOURCES)}", field="source")
    if score is not None and not math.isfinite(score):
        raise SpecError("must be a finite number", field="score")
    label = Label(feature_id=feature.id, text=text, source=source, author=author, score=score)
    session.add(label)
    session.flush()
    return label


def _newest_first(labels: Iterable[Label]) -> list[Label]:
    # Equal timestamps happen (coarse clocks); the id keeps insertion order.
    return sorted(labels, key=lambda lb: (lb.created_at, lb.id), reverse=True)


def pick_current_label(labels: Iterable[Label]) -> Label | None:
    """The newest human label; else the best-scored auto label (unscored counts as worst,
    ties go to the newest); else None. A person's word beats any model's."""
    ordered = _newest_first(labels)
    for label in ordered:
        if label.source == "human":
            return label
    autos = [lb for lb in ordered if lb.source == "auto"]
    if not autos:
        return None
    # max() keeps the first of equal keys, and `autos` is newest first.
    return max(autos, key=lambda lb: -math.inf if lb.score is None else lb.score)


def label_history(session: Session, feature_id: int) -> list[Label]:
    """Every label of the feature, newest first."""
    query = (
        select(Label)
        .where(Label.feature_id == feature_id)
        .order_by(Label.created_at.desc(), Label.id.desc())
    )
    return list(session.scalars(query))


def current_labels(session: Session, feature_ids: Iterable[int]) -> dict[int, Label]:
    """The current label of each feature that has one, in one query."""
    ids = list(feature_ids)
    if not ids:
        return {}
    by_feature: dict[int, list[Label]] = {}
    for label in session.scalars(select(Label).where(Label.feature_id.in_(ids))):
        by_feature.setdefault(label.feature_id, []).append(label)
    picked = {fid: pick_current_label(labels) for fid, labels in by_feature.items()}
    return {fid: label for fid, label in picked.items() if label is not None}
