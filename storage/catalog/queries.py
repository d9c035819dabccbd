"""Read functions over the catalog: SAEs, features, feature lists, what the API, the CLI
and the pages ask for; and what the other reads build on (`Page`, `FeatureView`, `run`).
A feature's own reads (examples, projection, effects, neighbours) are in
feature_reads.py, the searches in token_search.py, label_search.py and the like.

A crosscoder's features (two sources) also sort by relative norm and filter by class
(`sharing`: a_only / shared / b_only, saefeat/sae/crosscoder.py); those lists are refused
for any other SAE, naming the parameter.

Lists are keyset-paginated: a page is `limit` rows after the cursor's sort key, so pages
stay consistent and cheap however deep one goes (no OFFSET scans).

Reads select plain columns into small dataclasses (`...View`; `...Row` names an ORM
class only) instead of loading ORM objects, and the per-feature reads are statements
built once with bound parameters, run on the session's connection: they run on every
page view, and building statements and loading ORM objects cost several times the
indexed lookups themselves (bench/catalog.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Executable, Result, and_, bindparam, exists, func, or_, select
from sqlalchemy.orm import Session

from saefeat.errors import NotFoundError, SpecError
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.models import SAE, ActivationSetRow, Feature, Label

T = TypeVar("T")
FeatureSort = Literal["max_activation", "density", "relative_norm"]
SortOrder = Literal["asc", "desc"]
FEATURE_SORTS: tuple[str, ...] = ("max_activation", "density", "relative_norm")
# A two-source crosscoder's classes of features, as saefeat.sae.crosscoder.SHARING
# (which imports torch; tests/api/test_api_crosscoder.py keeps the two equal).
Sharing = Literal["a_only", "shared", "b_only"]
SHARING_CLASSES: tuple[str, ...] = ("a_only", "shared", "b_only")
# Artifact features (features/artifacts.py) in a list: left out (the default of sorted
# lists), kept, or the only ones shown.
ArtifactFilter = Literal["exclude", "include", "only"]
ARTIFACT_FILTERS: tuple[str, ...] = ("exclude", "include", "only")
MAX_PAGE = 500


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


@dataclass(slots=True)
class FeatureListView(FeatureView):
    """A feature of an SAE's list: its summary and, a crosscoder's, its decoder norm per
    source, relative norm and class (None for an SAE or a transcoder)."""

    decoder_norms: list[float] | None = None
    relative_norm: float | None = None
    sharing: str | None = None


CROSSCODER_COLUMNS = (Feature.decoder_norms, Feature.relative_norm, Feature.sharing)
FEATURE_LIST_COLUMNS = row_columns(Feature, FeatureListView)


def run(session: Session, statement: Executable, **params: Any) -> Result[Any]:
    """Execute a Core statement on the session's connection (inside its transaction),
    skipping the ORM's per-statement work."""
    return session.connection().execute(statement, params)


_FEATURES_BY_ID = select(*FEATURE_VIEW_COLUMNS).where(
    Feature.id.in_(bindparam("ids", expanding=True))
)


def features_by_id(session: Session, ids: Iterable[int]) -> dict[int, FeatureView]:
    """The features with these catalog ids, by id, in one query (a search's page)."""
    return {f.id: f for f in feature_views(run(session, _FEATURES_BY_ID, ids=list(ids)))}


@dataclass(slots=True)
class FeatureRecord(FeatureView):
    """One feature with its histogram and the SAE it belongs to (the feature page)."""

    histogram: dict[str, Any] | None
    sae_name: str
    hook_name: str  # the hook the SAE reads
    hook_out_name: str | None = None  # a transcoder's output hook (None: an SAE)
    # A crosscoder's (None for an SAE or a transcoder): see FeatureListView.
    decoder_norms: list[float] | None = None
    relative_norm: float | None = None
    sharing: str | None = None


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


def check_search(session: Session, limit: int, sae_id: str | None) -> None:
    """What every search checks first: `limit` is 1..MAX_PAGE, and the SAE exists if the
    search is limited to one."""
    _check_limit(limit)
    if sae_id is not None:
        require_sae(session, sae_id)


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
    sharing: Sharing | None = None,
) -> Page[FeatureListView]:
    """Features of one SAE, sorted by `sort` then by index (ascending, as a tie-break).

    `labelled`: True keeps features with at least one label, False those with none.
    `artifacts`: "exclude" leaves artifact features out, "include" keeps them, "only"
    lists only them. `sharing` (a class) and `sort="relative_norm"` are a two-source
    crosscoder's."""
    require_sae(session, sae_id)
    if sort not in FEATURE_SORTS:
        raise SpecError(f"is {sort!r}; use one of {list(FEATURE_SORTS)}", field="sort")
    if order not in ("asc", "desc"):
        raise SpecError(f"is {order!r}; use 'asc' or 'desc'", field="order")
    _check_crosscoder_list(session, sae_id, sort, sharing)
    _check_limit(limit)
    if min_density is not None and max_density is not None and min_density > max_density:
        raise SpecError(
            f"{min_density} is above max_density={max_density}; no feature can match",
            field="min_density",
        )
    column = getattr(Feature, sort)
    ordering = f"{sort}:{order}"
    query = select(*FEATURE_LIST_COLUMNS).where(Feature.sae_id == sae_id,
                                                *sharing_condition(sort, sharing))  # fmt: skip
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
    rows = [FeatureListView(*row) for row in run(session, query)]
    more = len(rows) > limit
    rows = rows[:limit]
    token = None
    if more:
        last = rows[-1]
        token = encode_cursor(Cursor(ordering, (getattr(last, sort), last.index)))
    return Page(rows, token)


def _check_crosscoder_list(session: Session, sae_id: str, sort: str, sharing: str | None
                           ) -> None:  # fmt: skip
    """`sharing` is a class, and with it or `sort="relative_norm"` the SAE is a crosscoder
    of two sources (SpecError naming the parameter)."""
    _check_sharing(sharing)
    if sharing is None and sort != "relative_norm":
        return
    field = "sharing" if sharing is not None else "sort"
    n = len(sae_sources(session, sae_id))
    if n != 2:
        what = f"a crosscoder of {n} sources" if n else "not a crosscoder"
        raise SpecError(f"SAE {sae_id!r} is {what}: only a crosscoder of two sources has a "
                        "relative norm and a class (sharing) per feature", field=field)  # fmt: skip


def _check_sharing(sharing: str | None) -> None:
    if sharing is not None and sharing not in SHARING_CLASSES:
        raise SpecError(f"is {sharing!r}; use one of {list(SHARING_CLASSES)}", field="sharing")


_SAE_CFG = select(SAE.cfg).where(SAE.id == bindparam("sae_id"))


def sae_sources(session: Session, sae_id: str) -> list[dict[str, Any]]:
    """A crosscoder's sources (its cfg's, in its decoder's column order); [] for an SAE
    or a transcoder, or an SAE not in the catalog."""
    cfg = run(session, _SAE_CFG, sae_id=sae_id).scalar() or {}
    sources = cfg.get("sources") if isinstance(cfg, dict) else None
    return list(sources) if isinstance(sources, list) and len(sources) >= 2 else []


def sharing_condition(sort: str, sharing: str | None) -> list[Any]:
    """The WHERE conditions of a crosscoder list: its class, and a relative norm to sort
    by (none for another sort and no class)."""
    out = [Feature.sharing == sharing] if sharing is not None else []
    return out + ([Feature.relative_norm.isnot(None)] if sort == "relative_norm" else [])


def artifact_condition(artifacts: str) -> list[Any]:
    """The WHERE conditions of an artifact filter (none for "include")."""
    if artifacts not in ARTIFACT_FILTERS:
        raise SpecError(f"is {artifacts!r}; use one of {list(ARTIFACT_FILTERS)}",
                        field="artifacts")  # fmt: skip
    if artifacts == "include":
        return []
    return [Feature.artifact.is_(None) if artifacts == "exclude" else Feature.artifact.isnot(None)]


def strongest_features(
    session: Session,
    sae_id: str,
    *,
    offset: int,
    limit: int,
    artifacts: ArtifactFilter = "exclude",
    sort: Literal["max_activation", "relative_norm"] = "max_activation",
    order: SortOrder = "desc",
    sharing: Sharing | None = None,
) -> list[tuple[FeatureListView, dict[str, Any] | None]]:
    """The SAE page's list: features by max activation (strongest first, ties by index;
    a crosscoder's may sort by relative norm and keep one class, `sharing`), each with its
    activation histogram; artifact features left out unless `artifacts` says otherwise.
    Numbered pages, so OFFSET paging."""
    if sort not in ("max_activation", "relative_norm"):
        raise SpecError(f"is {sort!r}; use max_activation or relative_norm", field="sort")
    _check_sharing(sharing)
    column = getattr(Feature, sort)
    query = (
        select(*FEATURE_LIST_COLUMNS, Feature.histogram)
        .where(
            Feature.sae_id == sae_id,
            *artifact_condition(artifacts),
            *sharing_condition(sort, sharing),
        )
        .order_by(column.asc() if order == "asc" else column.desc(), Feature.index)
        .offset(offset)
        .limit(limit)
    )
    return [(FeatureListView(*row[:-1]), row[-1]) for row in run(session, query)]


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


_SAE_OF_FEATURE = (SAE.d_sae, SAE.name, SAE.hook_name, SAE.hook_out_name)
_FEATURE_BY_INDEX = (
    select(*_SAE_OF_FEATURE, *FEATURE_VIEW_COLUMNS, Feature.histogram, *CROSSCODER_COLUMNS)
    .outerjoin(Feature, and_(Feature.sae_id == SAE.id, Feature.index == bindparam("index")))
    .where(SAE.id == bindparam("sae_id"))
)


def get_feature(session: Session, sae_id: str, index: int) -> FeatureRecord:
    """One feature with its SAE's name, in one query; NotFoundError says which part is
    missing (the SAE, the index, or the whole index run)."""
    found = run(session, _FEATURE_BY_INDEX, sae_id=sae_id, index=index).first()
    if found is None:
        raise _no_sae(sae_id)
    d_sae, sae_name, hook_name, hook_out_name, *columns, histogram, norms, rel, sharing = found
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
    return FeatureRecord(
        *columns, histogram, sae_name, hook_name, hook_out_name, norms, rel, sharing
    )


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
