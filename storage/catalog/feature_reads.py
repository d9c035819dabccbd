"""A feature's own reads: its examples, vocabulary projection, effects on the next token
and nearest neighbours, what its page shows and an export writes.

Each is one statement built once with bound parameters, in two forms from one
definition: for one feature (the page) and for a batch of features (exports, in one
query each). Examples come back as the one `FeatureExample` record the index writer
took in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from saefeat.features.records import FeatureExample
from saefeat.storage.catalog.models import (
    EFFECT_METHODS,
    EFFECT_SIDES,
    VOCAB_SIDES,
    Feature,
    FeatureExampleRow,
    Neighbour,
    TokenEffect,
    VocabToken,
)
from saefeat.storage.catalog.queries import FEATURE_VIEW_COLUMNS, FeatureView, row_columns, run

T = TypeVar("T")


def _one_and_many(query: Select[Any], feature_id: Any, *order: Any) -> tuple[Select, Select]:
    """`query` for one feature (bound `feature_id`) and for several (bound `ids`, each row's
    feature id appended last), both in `order` within a feature: one definition for the
    page's read and the export's batched read, so the two cannot drift apart. The page
    keeps its `=` statement: cheaper per call than a one-element expanding `IN`."""
    one = query.where(feature_id == bindparam("feature_id")).order_by(*order)
    many = (
        query.add_columns(feature_id)
        .where(feature_id.in_(bindparam("ids", expanding=True)))
        .order_by(feature_id, *order)
    )
    return one, many


def _by_feature(
    session: Session, statement: Select, ids: Iterable[int], make: Callable[[Any], T]
) -> dict[int, list[T]]:
    """Rows of a `many` statement grouped by feature id, in the statement's order; every id
    in `ids` has a list, empty when it has no rows."""
    out: dict[int, list[T]] = {fid: [] for fid in ids}
    for row in run(session, statement, ids=list(out)):
        out[row[-1]].append(make(row[:-1]))
    return out


def _example(row: Any) -> FeatureExample:
    return FeatureExample(*row)


# The record's fields are the table's columns, but for feature_index: its feature's index.
EXAMPLE_COLUMNS = tuple(
    Feature.index if f.name == "feature_index" else getattr(FeatureExampleRow, f.name)
    for f in fields(FeatureExample)
)
_EXAMPLES, _EXAMPLES_MANY = _one_and_many(
    select(*EXAMPLE_COLUMNS).join(Feature, Feature.id == FeatureExampleRow.feature_id),
    FeatureExampleRow.feature_id,
    # Top examples first, then quantile samples, each by rank.
    (FeatureExampleRow.kind != "top").asc(),
    FeatureExampleRow.kind,
    FeatureExampleRow.rank,
)


def feature_examples(session: Session, feature_id: int) -> list[FeatureExample]:
    """Top examples by rank, then quantile samples by rank."""
    return [_example(row) for row in run(session, _EXAMPLES, feature_id=feature_id)]


def feature_examples_many(session: Session, ids: Iterable[int]) -> dict[int, list[FeatureExample]]:
    """`feature_examples` of each feature in `ids`, in one query."""
    return _by_feature(session, _EXAMPLES_MANY, ids, _example)


@dataclass(slots=True)
class ProjectionView:
    """One entry of a feature's vocabulary projection."""

    side: str  # "top" or "bottom"
    rank: int
    token_id: int
    token_str: str
    value: float


_PROJECTION, _PROJECTION_MANY = _one_and_many(
    select(*row_columns(VocabToken, ProjectionView)),
    VocabToken.feature_id,
    VocabToken.side,
    VocabToken.rank,
)


def _sides(rows: Iterable[ProjectionView]) -> dict[str, list[ProjectionView]]:
    sides: dict[str, list[ProjectionView]] = {side: [] for side in VOCAB_SIDES}
    for row in rows:
        sides[row.side].append(row)
    return sides


def feature_projection(session: Session, feature_id: int) -> dict[str, list[ProjectionView]]:
    """{"top": [...], "bottom": [...]}, each by rank."""
    rows = run(session, _PROJECTION, feature_id=feature_id)
    return _sides(ProjectionView(*row) for row in rows)


def feature_projection_many(
    session: Session, ids: Iterable[int]
) -> dict[int, dict[str, list[ProjectionView]]]:
    """`feature_projection` of each feature in `ids`, in one query."""
    rows = _by_feature(session, _PROJECTION_MANY, ids, lambda row: ProjectionView(*row))
    return {fid: _sides(entries) for fid, entries in rows.items()}


@dataclass(slots=True)
class EffectView:
    """One token of a feature's effect on the next token (features/effects.py)."""

    method: str  # "measured" or "debiased"
    side: str  # "up" (made more likely) or "down"
    rank: int
    token_id: int
    token_str: str
    value: float  # measured: mean drop in next-token probability; debiased: z-score


Effects = dict[str, dict[str, list[EffectView]]]  # method -> side -> entries by rank

_EFFECTS, _EFFECTS_MANY = _one_and_many(
    select(*row_columns(TokenEffect, EffectView)),
    TokenEffect.feature_id,
    TokenEffect.method,
    TokenEffect.side,
    TokenEffect.rank,
)


def _methods(rows: Iterable[EffectView]) -> Effects:
    out: Effects = {m: {side: [] for side in EFFECT_SIDES} for m in EFFECT_METHODS}
    for row in rows:
        out[row.method][row.side].append(row)
    return out


def feature_effects(session: Session, feature_id: int) -> Effects:
    """{"measured": {"up": [...], "down": [...]}, "debiased": {...}}, each by rank; empty
    lists where the index stored none (a feature that never fired has no measured one)."""
    return _methods(EffectView(*row) for row in run(session, _EFFECTS, feature_id=feature_id))


def feature_effects_many(session: Session, ids: Iterable[int]) -> dict[int, Effects]:
    """`feature_effects` of each feature in `ids`, in one query."""
    rows = _by_feature(session, _EFFECTS_MANY, ids, lambda row: EffectView(*row))
    return {fid: _methods(entries) for fid, entries in rows.items()}


@dataclass
class NeighbourMatch:
    feature: FeatureView
    rank: int
    cosine: float


def _neighbour(row: Any) -> NeighbourMatch:
    return NeighbourMatch(FeatureView(*row[:-2]), *row[-2:])


_NEIGHBOURS, _NEIGHBOURS_MANY = _one_and_many(
    select(*FEATURE_VIEW_COLUMNS, Neighbour.rank, Neighbour.cosine).join(
        Neighbour, Neighbour.neighbour_feature_id == Feature.id
    ),
    Neighbour.feature_id,
    Neighbour.rank,
)


def feature_neighbours(session: Session, feature_id: int) -> list[NeighbourMatch]:
    """The feature's nearest features by decoder cosine, nearest first."""
    return [_neighbour(row) for row in run(session, _NEIGHBOURS, feature_id=feature_id)]


def feature_neighbours_many(
    session: Session, ids: Iterable[int]
) -> dict[int, list[NeighbourMatch]]:
    """`feature_neighbours` of each feature in `ids`, in one query."""
    return _by_feature(session, _NEIGHBOURS_MANY, ids, _neighbour)
