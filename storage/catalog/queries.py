"""Read functions over the catalog: what the API, the CLI and the pages ask for.

Lists are keyset-paginated: a page is `limit` rows after the cursor's sort key, so pages
stay consistent and cheap however deep one goes (no OFFSET scans).

Reads select plain columns into small dataclasses (`...View`; `...Row` names an ORM
class only) instead of loading ORM objects, and the per-feature reads are statements
built once with bound parameters, run on the session's connection: they run on every
page view, and building statements and loading ORM objects cost several times the
indexed lookups themselves (bench/catalog.py). Examples come back as the one
`FeatureExample` record the index writer took in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Executable, Result, Select, and_, bindparam, exists, func, or_, select
from sqlalchemy.orm import Session

from saefeat.errors import NotFoundError, SpecError
from saefeat.features.records import FeatureExample
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.models import (
    EFFECT_METHODS,
    EFFECT_SIDES,
    SAE,
    VOCAB_SIDES,
    ActivationSetRow,
    Feature,
    FeatureExampleRow,
    Label,
    Neighbour,
    TokenEffect,
    VocabToken,
)

T = TypeVar("T")
FeatureSort = Literal["max_activation", "density"]
SortOrder = Literal["asc", "desc"]
Side = Literal["top", "bottom"]
FEATURE_SORTS: tuple[str, ...] = ("max_activation", "density")
# Artifact features (features/artifacts.py) in a list: left out (the default of sorted
# lists), kept, or the only ones shown.
ArtifactFilter = Literal["exclude", "include", "only"]
ARTIFACT_FILTERS: tuple[str, ...] = ("exclude", "include", "only")
MAX_PAGE = 500
# Tokenizers spell a leading space differently: decoded text " cat", byte-level BPE
# (GPT-2, Llama 3, SmolLM) "Ġcat", SentencePiece (Llama 2, Gemma) "▁cat".
SPACE_MARKERS = (" ", "Ġ", "▁")


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(slots=True)
class FeatureView:
    """A feature's summary columns (what lists and links show)."""

    id: int
    sae_id: str
    index: int
    density: float
    max_activation: float
    mean_activation: float
    artifact: str | None  # why it is an artifact (features/artifacts.py); None: it is not


def row_columns(model: type, view_type: type) -> tuple[Any, ...]:
    """The ORM model's columns named by the view dataclass's fields, in field order: a
    select of them unpacks straight into `view_type(*row)`."""
    return tuple(getattr(model, f.name) for f in fields(view_type))


FEATURE_VIEW_COLUMNS = row_columns(Feature, FeatureView)


def feature_views(rows: Any) -> list[FeatureView]:
    return [FeatureView(*row) for row in rows]


def run(session: Session, statement: Executable, **params: Any) -> Result[Any]:
    """Execute a Core statement on the session's connection (inside its transaction),
    skipping the ORM's per-statement work."""
    return session.connection().execute(statement, params)


@dataclass(slots=True)
class FeatureRecord(FeatureView):
    """One feature with its histogram and the SAE it belongs to (the feature page)."""

    histogram: dict[str, Any] | None
    sae_name: str
    hook_name: str


@dataclass
class TokenMatch:
    """A feature whose vocabulary projection holds the searched token."""

    feature: FeatureView
    token_str: str  # the spelling that matched
    token_id: int
    rank: int  # position in the feature's top or bottom list (0 = strongest)
    value: float


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise SpecError(f"is {limit}; use 1..{MAX_PAGE}", field="limit")


def list_saes(session: Session, *, limit: int = 100, cursor: str | None = None) -> Page[SAE]:
    """SAEs in id order."""
    _check_limit(limit)
    query = select(SAE).order_by(SAE.id).limit(limit + 1)
    if cursor is not None:
        (after,) = decode_cursor(cursor, "saes", (str,)).key
        query = query.where(SAE.id > after)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    token = encode_cursor(Cursor("saes", (rows[-1].id,))) if more else None
    return Page(rows, token)


def get_sae(session: Session, sae_id: str) -> SAE:
    sae = session.get(SAE, sae_id)
    if sae is None:
        raise _no_sae(sae_id)
    return sae


def _no_sae(sae_id: str) -> NotFoundError:
    return NotFoundError(
        f"no SAE with id {sae_id!r}; GET /v1/saes lists the SAEs in the catalog",
        field="sae_id",
    )


_SAE_SIZE = select(SAE.d_sae).where(SAE.id == bindparam("sae_id"))


def require_sae(session: Session, sae_id: str) -> None:
    """NotFoundError unless the SAE exists (one indexed lookup, no ORM object)."""
    if run(session, _SAE_SIZE, sae_id=sae_id).scalar() is None:
        raise _no_sae(sae_id)


def count_features(session: Session, sae_id: str) -> int:
    """How many of the SAE's features are indexed. An index run writes all d_sae of them
    in one transaction, so this is d_sae or 0: one lookup, not a count of a million rows."""
    indexed = exists().where(Feature.sae_id == SAE.id)
    return session.scalar(select(SAE.d_sae).where(SAE.id == sae_id, indexed)) or 0


def list_features(
    session: Session,
    sae_id: str,
    *,
    sort: FeatureSort = "max_activation",
    order: SortOrder = "desc",
    min_density: float | None = None,
    max_density: float | None = None,
    labelled: bool | None = None,
    limit: int = 50,
    cursor: str | None = None,
    artifacts: ArtifactFilter = "exclude",
) -> Page[FeatureView]:
    """Features of one SAE, sorted by `sort` then by index (ascending, as a tie-break).

    `labelled`: True keeps features with at least one label, False those with none.
    `artifacts`: "exclude" leaves artifact features out, "include" keeps them, "only"
    lists only them."""
    require_sae(session, sae_id)
    if sort not in FEATURE_SORTS:
        raise SpecError(f"is {sort!r}; use one of {list(FEATURE_SORTS)}", field="sort")
    if order not in ("asc", "desc"):
        raise SpecError(f"is {order!r}; use 'asc' or 'desc'", field="order")
    _check_limit(limit)
    if min_density is not None and max_density is not None and min_density > max_density:
        raise SpecError(
            f"{min_density} is above max_density={max_density}; no feature can match",
            field="min_density",
        )
    column = getattr(Feature, sort)
    ordering = f"{sort}:{order}"
    query = select(*FEATURE_VIEW_COLUMNS).where(Feature.sae_id == sae_id)
    if min_density is not None:
        query = query.where(Feature.density >= min_density)
    if max_density is not None:
        query = query.where(Feature.density <= max_density)
    if labelled is not None:
        has_label = exists().where(Label.feature_id == Feature.id)
        query = query.where(has_label if labelled else ~has_label)
    query = query.where(*artifact_condition(artifacts))
    if cursor is not None:
        value, index = decode_cursor(cursor, ordering, (float, int)).key
        beyond = column < value if order == "desc" else column > value
        query = query.where(or_(beyond, and_(column == value, Feature.index > index)))
    primary = column.desc() if order == "desc" else column.asc()
    query = query.order_by(primary, Feature.index.asc()).limit(limit + 1)
    rows = feature_views(run(session, query))
    more = len(rows) > limit
    rows = rows[:limit]
    token = None
    if more:
        last = rows[-1]
        token = encode_cursor(Cursor(ordering, (getattr(last, sort), last.index)))
    return Page(rows, token)


def artifact_condition(artifacts: str) -> list[Any]:
    """The WHERE conditions of an artifact filter (none for "include")."""
    if artifacts not in ARTIFACT_FILTERS:
        raise SpecError(f"is {artifacts!r}; use one of {list(ARTIFACT_FILTERS)}",
                        field="artifacts")  # fmt: skip
    if artifacts == "include":
        return []
    return [Feature.artifact.is_(None) if artifacts == "exclude" else Feature.artifact.isnot(None)]


def strongest_features(
    session: Session, sae_id: str, *, offset: int, limit: int, artifacts: ArtifactFilter = "exclude"
) -> list[tuple[FeatureView, dict[str, Any] | None]]:
    """The SAE page's list: features by max activation (strongest first, ties by index),
    each with its activation histogram; artifact features left out unless `artifacts`
    says otherwise. Numbered pages, so OFFSET paging."""
    query = (
        select(*FEATURE_VIEW_COLUMNS, Feature.histogram)
        .where(Feature.sae_id == sae_id, *artifact_condition(artifacts))
        .order_by(Feature.max_activation.desc(), Feature.index)
        .offset(offset)
        .limit(limit)
    )
    return [(FeatureView(*row[:-1]), row[-1]) for row in run(session, query)]


@dataclass(frozen=True)
class SetLineage:
    """The activation set an SAE was trained on: its catalog row (None when the SAE names
    no set, or the set is not in this catalog) and the corpus sources its own spec lists
    (None when the Zarr set is not under this machine's activations folder)."""

    activation_set: ActivationSetRow | None
    corpus: list[dict[str, Any]] | None


def sae_lineage(session: Session, sae: SAE, activations_dir: Path) -> SetLineage:
    aset = session.get(ActivationSetRow, sae.activation_set_id) if sae.activation_set_id else None
    return SetLineage(aset, _recorded_corpus(activations_dir, aset.id) if aset else None)


def _recorded_corpus(activations_dir: Path, set_id: str) -> list[dict[str, Any]] | None:
    # The corpus is kept in the set's own spec, not in the catalog. Imported here: opening
    # a Zarr set loads zarr and torch, which importing the catalog must not.
    from saefeat.storage.activations import open_set

    try:
        return open_set(activations_dir, set_id).spec.get("corpus")
    except Exception:  # harvested elsewhere, or gone: the page still answers
        return None


_FEATURE_BY_INDEX = (
    select(SAE.d_sae, SAE.name, SAE.hook_name, *FEATURE_VIEW_COLUMNS, Feature.histogram)
    .outerjoin(Feature, and_(Feature.sae_id == SAE.id, Feature.index == bindparam("index")))
    .where(SAE.id == bindparam("sae_id"))
)


def get_feature(session: Session, sae_id: str, index: int) -> FeatureRecord:
    """One feature with its SAE's name, in one query; NotFoundError says which part is
    missing (the SAE, the index, or the whole index run)."""
    found = run(session, _FEATURE_BY_INDEX, sae_id=sae_id, index=index).first()
    if found is None:
        raise _no_sae(sae_id)
    d_sae, sae_name, hook_name, *columns, histogram = found
    if not 0 <= index < d_sae:
        raise NotFoundError(
            f"SAE {sae_id!r} has features 0..{d_sae - 1}; {index} is not one of them",
            field="index",
        )
    if columns[0] is None:
        raise NotFoundError(
            f"SAE {sae_id!r} has not been indexed yet; run the index step for it first",
            field="index",
        )
    return FeatureRecord(*columns, histogram, sae_name, hook_name)


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


def token_variants(token: str, *, exact: bool = False) -> list[str]:
    """Spellings that count as the same token: the string itself, and the same word with
    no leading-space marker or with each of " ", "Ġ", "▁". One leading marker is stripped
    from the query first, so "cat", " cat", "Ġcat" and "▁cat" all find the same features.
    """
    if exact:
        return [token]
    core = token[1:] if len(token) > 1 and token[0] in SPACE_MARKERS else token
    return list(dict.fromkeys([token, core, *(marker + core for marker in SPACE_MARKERS)]))


def search_by_token(
    session: Session,
    token: str,
    *,
    sae_id: str | None = None,
    side: Side = "top",
    exact: bool = False,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[TokenMatch]:
    """Features whose `side` projection list holds `token` (see `token_variants`), strongest
    first: by value descending for "top", ascending (most negative) for "bottom"; ties by
    feature id in the same direction. A feature holding several spellings appears once,
    with its strongest.

    Each spelling's entries are read in that order off the (token_str, side, value,
    feature_id) index, `batch` at a time, and merged; only entries no later than the
    earliest cut-off of a truncated spelling are certain, so a short page reads more."""
    if side not in VOCAB_SIDES:
        raise SpecError(f"is {side!r}; use one of {list(VOCAB_SIDES)}", field="side")
    if not token:
        raise SpecError("must not be empty", field="token")
    _check_limit(limit)
    if sae_id is not None:
        require_sae(session, sae_id)
    top = side == "top"
    ordering = f"token:{side}"
    v = VocabToken
    query = select(v.feature_id, v.token_str, v.token_id, v.rank, v.value).where(
        v.token_str == bindparam("token_str"), v.side == side
    )
    if sae_id is not None:
        query = query.join(Feature, Feature.id == v.feature_id).where(Feature.sae_id == sae_id)
    if cursor is not None:
        value, feature_id = decode_cursor(cursor, ordering, (float, int)).key
        if top:
            query = query.where(
                or_(v.value < value, and_(v.value == value, v.feature_id < feature_id))
            )
        else:
            query = query.where(
                or_(v.value > value, and_(v.value == value, v.feature_id > feature_id))
            )
    if top:
        query = query.order_by(v.value.desc(), v.feature_id.desc())
    else:
        query = query.order_by(v.value.asc(), v.feature_id.asc())
    query = query.limit(bindparam("n"))

    def order_key(row) -> tuple[float, int]:  # ascending = the order of the results
        return (-row.value, -row.feature_id) if top else (row.value, row.feature_id)

    variants = token_variants(token, exact=exact)
    batch = limit + 1
    while True:
        rows, frontier = [], None
        for spelling in variants:
            got = run(session, query, token_str=spelling, n=batch).all()
            rows += got
            if len(got) == batch:  # truncated: nothing is known beyond its last row
                last = order_key(got[-1])
                frontier = last if frontier is None else min(frontier, last)
        rows = [r for r in rows if frontier is None or order_key(r) <= frontier]
        rows.sort(key=order_key)
        best = _strongest_values(session, {r.feature_id for r in rows}, variants, side)
        picked: list[Any] = []
        seen: set[int] = set()
        for row in rows:
            # A feature counts at its strongest spelling only: a weaker one after the
            # cursor belongs to a feature an earlier page already showed.
            if row.feature_id in seen or row.value != best[row.feature_id]:
                continue
            seen.add(row.feature_id)
            picked.append(row)
            if len(picked) > limit:
                break
        if len(picked) > limit or frontier is None:
            break
        batch *= 4
    ids = [r.feature_id for r in picked[:limit]]
    features = {f.id: f for f in feature_views(run(session, _FEATURES_BY_ID, ids=ids))}
    items = [
        TokenMatch(features[r.feature_id], r.token_str, r.token_id, r.rank, r.value)
        for r in picked[:limit]
    ]
    token_out = None
    if len(picked) > limit:
        last = picked[limit - 1]
        token_out = encode_cursor(Cursor(ordering, (last.value, last.feature_id)))
    return Page(items, token_out)


_FEATURES_BY_ID = select(*FEATURE_VIEW_COLUMNS).where(
    Feature.id.in_(bindparam("ids", expanding=True))
)


def _strongest_values(
    session: Session, ids: set[int], variants: list[str], side: str
) -> dict[int, float]:
    """Each feature's strongest projection value over the spellings `variants` on `side`."""
    if not ids:
        return {}
    v = VocabToken
    strongest = func.max(v.value) if side == "top" else func.min(v.value)
    query = (
        select(v.feature_id, strongest)
        .where(v.feature_id.in_(sorted(ids)), v.side == side, v.token_str.in_(variants))
        .group_by(v.feature_id)
    )
    return dict(run(session, query).all())


def artifact_reasons(session: Session, sae_id: str, indices: Iterable[int]) -> dict[int, str]:
    """Feature index -> artifact reason, for the features of one SAE that are flagged."""
    query = select(Feature.index, Feature.artifact).where(
        Feature.sae_id == sae_id,
        Feature.index.in_(sorted(set(indices))),
        Feature.artifact.isnot(None),
    )
    return dict(run(session, query).all())


def count_artifacts(session: Session, sae_id: str) -> int:
    """How many of the SAE's features are flagged as artifacts."""
    query = select(func.count()).where(Feature.sae_id == sae_id, Feature.artifact.isnot(None))
    return int(run(session, query).scalar() or 0)
