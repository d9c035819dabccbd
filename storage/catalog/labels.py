"""Feature labels: an append-only history, and the rule that picks the current one."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import Integer, Select, bindparam, case, func, select, union
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from saefeat.errors import NotFoundError, SpecError
from saefeat.storage.catalog.models import (
    LABEL_SOURCES,
    VOTE_VALUES,
    Feature,
    Label,
    LabelVote,
    Neighbour,
    utcnow,
)
from saefeat.storage.catalog.queries import row_columns, run

MAX_LABEL_CHARS = 500
# The dialects whose INSERT has ON CONFLICT (the two the catalog runs on).
_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


class HasId(Protocol):
    id: int


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored as label text, or None. NUL is refused on both
    databases alike (PostgreSQL text cannot hold it); a lone surrogate cannot be encoded."""
    if "\x00" in text:
        return "must not contain a NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate ({text[exc.start]!r}); send valid Unicode"
    if not text.strip():
        return "must not be blank"
    if len(text.strip()) > MAX_LABEL_CHARS:
        return f"has {len(text.strip())} characters; at most {MAX_LABEL_CHARS}"
    return None


# Every score saefeat makes is in [0, 1] (and the API takes labels' scores there);
# imported ones may be correlations (Neuronpedia's simulator scores), hence down to -1.
SCORE_RANGE = (-1.0, 1.0)


def add_label(
    session: Session,
    feature: HasId,
    *,
    text: str,
    source: str = "human",
    author: str | None = None,
    score: float | None = None,
) -> Label:
    """Append a label to `feature`'s history (labels are never edited). The caller commits."""
    problem = text_problem(text)
    if problem:
        raise SpecError(problem, field="text")
    text = text.strip()
    if source not in LABEL_SOURCES:
        raise SpecError(f"is {source!r}; use one of {list(LABEL_SOURCES)}", field="source")
    low, high = SCORE_RANGE
    if score is not None and not (math.isfinite(score) and low <= score <= high):
        raise SpecError(f"is {score!r}; a label's score is in [{low:g}, {high:g}]",
                        field="score")  # fmt: skip
    label = Label(feature_id=feature.id, text=text, source=source, author=author, score=score)
    session.add(label)
    session.flush()
    return label


@dataclass(slots=True)
class LabelView:
    """A label as read back (plain columns; the ORM `Label` is for writing)."""

    id: int
    feature_id: int
    text: str
    source: str
    author: str | None
    score: float | None
    created_at: datetime


LABEL_ROW_COLUMNS = row_columns(Label, LabelView)


def label_rows(rows: Iterable) -> list[LabelView]:
    return [LabelView(*row) for row in rows]


@dataclass(frozen=True)
class Votes:
    up: int = 0
    down: int = 0

    @property
    def net(self) -> int:
        return self.up - self.down


def vote_label(session: Session, label_id: int, *, voter: str, value: int) -> Votes:
    """Record `voter`'s vote (+1 up, -1 down) on a label, replacing their earlier vote.

    One upsert (INSERT ... ON CONFLICT DO UPDATE), so the same voter voting from many
    requests at once ends with one row, never a duplicate-key error. The caller commits.
    Returns the label's totals after the vote."""
    if value not in VOTE_VALUES:
        raise SpecError(f"is {value!r}; use 1 (up) or -1 (down)", field="value")
    if session.get(Label, label_id) is None:
        raise NotFoundError(f"no label with id {label_id}", field="label_id")
    insert = _INSERTS[session.get_bind().dialect.name]
    row = {"label_id": label_id, "voter": voter, "value": value, "created_at": utcnow()}
    upsert = insert(LabelVote).values(row)
    upsert = upsert.on_conflict_do_update(
        index_elements=[LabelVote.label_id, LabelVote.voter],
        set_={"value": upsert.excluded.value, "created_at": upsert.excluded.created_at},
    )
    session.execute(upsert)
    return label_votes(session, [label_id]).get(label_id, Votes())


# A label's up and down totals (over its LabelVote rows).
_UP_DOWN = (
    func.sum(case((LabelVote.value > 0, 1), else_=0)),
    func.sum(case((LabelVote.value < 0, 1), else_=0)),
)
_VOTE_TOTALS = (
    select(LabelVote.label_id, *_UP_DOWN)
    .where(LabelVote.label_id.in_(bindparam("ids", expanding=True)))
    .group_by(LabelVote.label_id)
)


def label_votes(session: Session, label_ids: Iterable[int]) -> dict[int, Votes]:
    """Up and down totals of each label that has votes, in one query."""
    ids = list(label_ids)
    if not ids:
        return {}
    rows = run(session, _VOTE_TOTALS, ids=ids)
    return {lid: Votes(int(u or 0), int(d or 0)) for lid, u, d in rows}


def is_accepted(label: Label | LabelView, votes: Votes | None) -> bool:
    """A human label stands unless more people voted it down than up."""
    return votes is None or votes.net >= 0


def _newest_first(labels: Iterable[LabelView]) -> list[LabelView]:
    # Equal timestamps happen (coarse clocks); the id keeps insertion order.
    return sorted(labels, key=lambda lb: (lb.created_at, lb.id), reverse=True)


def pick_current_label(
    labels: Iterable[LabelView], votes: dict[int, Votes] | None = None
) -> LabelView | None:
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


def current_label(session: Session, feature_id: int) -> LabelView | None:
    return current_labels(session, [feature_id]).get(feature_id)


def label_history(session: Session, feature_id: int) -> list[LabelView]:
    """Every label of the feature, newest first."""
    return label_state(session, [feature_id]).history(feature_id)


def label_history_page(
    session: Session, feature_id: int, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[LabelView], str | None]:
    """One page of the feature's labels, newest (highest id) first, and the next cursor."""
    from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor

    query = select(*LABEL_ROW_COLUMNS).where(Label.feature_id == feature_id)
    if cursor is not None:
        (after,) = decode_cursor(cursor, "labels:history", (int,)).key
        query = query.where(Label.id < after)
    rows = label_rows(run(session, query.order_by(Label.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(Cursor("labels:history", (rows[-1].id,))) if more else None


def _labels_with_votes() -> Select:
    return (
        select(*LABEL_ROW_COLUMNS, *_UP_DOWN)
        .outerjoin(LabelVote, LabelVote.label_id == Label.id)
        .group_by(Label.id)  # the other label columns depend on it (the primary key)
    )


_LABELS_OF = _labels_with_votes().where(Label.feature_id.in_(bindparam("ids", expanding=True)))
# A feature's labels and its stored neighbours' labels (what its page shows). A join on
# the eleven ids, not `feature_id = x OR feature_id IN (...)`: PostgreSQL answers that OR
# with a scan of every label (60 ms at 100,000 labels; bench/catalog.py).
_AROUND = union(
    select(bindparam("feature_id", type_=Integer).label("feature_id")),
    select(Neighbour.neighbour_feature_id).where(Neighbour.feature_id == bindparam("feature_id")),
).subquery()
_LABELS_AROUND = _labels_with_votes().join(_AROUND, _AROUND.c.feature_id == Label.feature_id)


@dataclass
class LabelState:
    """Every label of some features (newest first) and the votes on them."""

    by_feature: dict[int, list[LabelView]]
    votes: dict[int, Votes]

    @classmethod
    def from_rows(cls, rows: Iterable) -> LabelState:
        labels, votes = [], {}
        for *columns, up, down in rows:
            label = LabelView(*columns)
            labels.append(label)
            votes[label.id] = Votes(int(up or 0), int(down or 0))
        by_feature: dict[int, list[LabelView]] = {}
        for label in _newest_first(labels):
            by_feature.setdefault(label.feature_id, []).append(label)
        return cls(by_feature, votes)

    def history(self, feature_id: int) -> list[LabelView]:
        return self.by_feature.get(feature_id, [])

    def current(self, feature_id: int) -> LabelView | None:
        return pick_current_label(self.history(feature_id), self.votes)

    def currents(self) -> dict[int, LabelView]:
        picked = {fid: self.current(fid) for fid in self.by_feature}
        return {fid: label for fid, label in picked.items() if label is not None}


def label_state(session: Session, feature_ids: Iterable[int]) -> LabelState:
    """The labels of these features with their vote totals, in one query."""
    ids = list(feature_ids)
    if not ids:
        return LabelState({}, {})
    return LabelState.from_rows(run(session, _LABELS_OF, ids=ids))


def label_state_around(session: Session, feature_id: int) -> LabelState:
    """The labels of a feature and of its stored neighbours, with votes, in one query."""
    return LabelState.from_rows(run(session, _LABELS_AROUND, feature_id=feature_id))


def current_labels(session: Session, feature_ids: Iterable[int]) -> dict[int, LabelView]:
    """The current label of each feature that has one."""
    return label_state(session, feature_ids).currents()


def current_label_texts(session: Session, sae_id: str, indices: Iterable[int]) -> dict[int, str]:
    """Feature index -> current label text, for the features of one SAE that have one."""
    ids = dict(session.execute(
        select(Feature.index, Feature.id)
        .where(Feature.sae_id == sae_id, Feature.index.in_(list(indices)))
    ).all())  # fmt: skip
    current = current_labels(session, ids.values())
    return {index: current[fid].text for index, fid in ids.items() if fid in current}
