"""Feature labels: an append-only history, and the rule that picks the current one."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from saefeat.errors import NotFoundError, SpecError
from saefeat.storage.catalog.models import LABEL_SOURCES, VOTE_VALUES, Feature, Label, LabelVote

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


@dataclass(frozen=True)
class Votes:
    up: int = 0
    down: int = 0

    @property
    def net(self) -> int:
        return self.up - self.down


def vote_label(session: Session, label_id: int, *, voter: str, value: int) -> Votes:
    """Record `voter`'s vote (+1 up, -1 down) on a label, replacing their earlier vote.

    The caller commits. Returns the label's totals after the vote."""
    if value not in VOTE_VALUES:
        raise SpecError(f"is {value!r}; use 1 (up) or -1 (down)", field="value")
    if session.get(Label, label_id) is None:
        raise NotFoundError(f"no label with id {label_id}", field="label_id")
    vote = session.get(LabelVote, (label_id, voter))
    if vote is None:
        session.add(LabelVote(label_id=label_id, voter=voter, value=value))
    else:
        vote.value = value
    session.flush()
    return label_votes(session, [label_id]).get(label_id, Votes())


def label_votes(session: Session, label_ids: Iterable[int]) -> dict[int, Votes]:
    """Up and down totals of each label that has votes, in one query."""
    ids = list(label_ids)
    if not ids:
        return {}
    up = func.sum(case((LabelVote.value > 0, 1), else_=0))
    down = func.sum(case((LabelVote.value < 0, 1), else_=0))
    query = (
        select(LabelVote.label_id, up, down)
        .where(LabelVote.label_id.in_(ids))
        .group_by(LabelVote.label_id)
    )
    return {lid: Votes(int(u or 0), int(d or 0)) for lid, u, d in session.execute(query)}


def is_accepted(label: Label, votes: Votes | None) -> bool:
    """A human label stands unless more people voted it down than up."""
    return votes is None or votes.net >= 0


def _newest_first(labels: Iterable[Label]) -> list[Label]:
    # Equal timestamps happen (coarse clocks); the id keeps insertion order.
    return sorted(labels, key=lambda lb: (lb.created_at, lb.id), reverse=True)


def pick_current_label(
    labels: Iterable[Label], votes: dict[int, Votes] | None = None
) -> Label | None:
    """The newest accepted human label (see `is_accepted`); else the best-scored auto label
    (unscored counts as worst, ties go to the newest); else None. A person's word beats
    any model's, unless people voted it down."""
    votes = votes or {}
    ordered = _newest_first(labels)
    for label in ordered:
        if label.source == "human" and is_accepted(label, votes.get(label.id)):
            return label
    autos = [lb for lb in ordered if lb.source == "auto"]
    if not autos:
        return None
    # max() keeps the first of equal keys, and `autos` is newest first.
    return max(autos, key=lambda lb: -math.inf if lb.score is None else lb.score)


def current_label(session: Session, feature_id: int) -> Label | None:
    return current_labels(session, [feature_id]).get(feature_id)


def label_history(session: Session, feature_id: int) -> list[Label]:
    """Every label of the feature, newest first."""
    query = (
        select(Label)
        .where(Label.feature_id == feature_id)
        .order_by(Label.created_at.desc(), Label.id.desc())
    )
    return list(session.scalars(query))


def label_history_page(
    session: Session, feature_id: int, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[Label], str | None]:
    """One page of the feature's labels, newest (highest id) first, and the next cursor."""
    from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor

    query = select(Label).where(Label.feature_id == feature_id)
    if cursor is not None:
        (after,) = decode_cursor(cursor, "labels:history", (int,)).key
        query = query.where(Label.id < after)
    rows = list(session.scalars(query.order_by(Label.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(Cursor("labels:history", (rows[-1].id,))) if more else None


def current_labels(session: Session, feature_ids: Iterable[int]) -> dict[int, Label]:
    """The current label of each feature that has one, in one query."""
    ids = list(feature_ids)
    if not ids:
        return {}
    by_feature: dict[int, list[Label]] = {}
    for label in session.scalars(select(Label).where(Label.feature_id.in_(ids))):
        by_feature.setdefault(label.feature_id, []).append(label)
    human = [lb.id for group in by_feature.values() for lb in group if lb.source == "human"]
    votes = label_votes(session, human)
    picked = {fid: pick_current_label(labels, votes) for fid, labels in by_feature.items()}
    return {fid: label for fid, label in picked.items() if label is not None}
