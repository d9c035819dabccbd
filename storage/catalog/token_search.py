"""Token search three ways, none needing an explanation: features by the tokens they
fire on (`fired_tokens`: a token's share of the activation mass of the top examples),
by what their decoder row promotes (`vocab_tokens`, queries.search_by_token), and by
their measured effect on the next token (`token_effects`, method "measured", side "up").

Every way reads one spelling's entries off its (token_str, ..., value, feature_id) index
in value order, `limit + 1` at a time, and merges the spellings (queries.token_variants)
as queries.search_by_token does, so a request reads about a page of rows per spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, bindparam, func, literal, or_, select
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.models import Feature, FiredToken, TokenEffect
from saefeat.storage.catalog.queries import (
    FEATURE_VIEW_COLUMNS,
    MAX_PAGE,
    Page,
    TokenMatch,
    feature_views,
    require_sae,
    run,
    search_by_token,
    token_variants,
)

SearchBy = Literal["fires", "promotes", "effect"]
SEARCH_BY: tuple[str, ...] = ("fires", "promotes", "effect")


@dataclass(frozen=True)
class _Source:
    """A token table as the search reads it: its columns and the rows that count."""

    feature_id: Any
    token_str: Any
    token_id: Any
    rank: Any
    value: Any
    where: tuple[ColumnElement, ...]


_SOURCES = {
    "fires": _Source(FiredToken.feature_id, FiredToken.token_str, literal(-1), FiredToken.rank,
                     FiredToken.share, ()),
    "effect": _Source(TokenEffect.feature_id, TokenEffect.token_str, TokenEffect.token_id,
                      TokenEffect.rank, TokenEffect.value,
                      (TokenEffect.method == "measured", TokenEffect.side == "up")),
}  # fmt: skip


def search_tokens(
    session: Session,
    token: str,
    *,
    by: str = "promotes",
    sae_id: str | None = None,
    side: str = "top",
    exact: bool = False,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[TokenMatch]:
    """Features found by `token` (see queries.token_variants), largest value first:
    `fires`, the token's share of the feature's top-example activation mass (token_id is
    -1: fired tokens are stored as text); `promotes`, the vocabulary projection on `side`
    (queries.search_by_token); `effect`, the measured rise of the token's probability."""
    if by not in SEARCH_BY:
        raise SpecError(f"is {by!r}; use one of {list(SEARCH_BY)}", field="by")
    if by == "promotes":
        return search_by_token(session, token, sae_id=sae_id, side=side,  # type: ignore[arg-type]
                               exact=exact, limit=limit, cursor=cursor)  # fmt: skip
    if not token:
        raise SpecError("must not be empty", field="token")
    if not 1 <= limit <= MAX_PAGE:
        raise SpecError(f"is {limit}; use 1..{MAX_PAGE}", field="limit")
    if sae_id is not None:
        require_sae(session, sae_id)
    return _ranked(session, _SOURCES[by], token, f"token:{by}", sae_id, exact, limit, cursor)


def _ranked(
    session: Session, src: _Source, token: str, ordering: str, sae_id: str | None,
    exact: bool, limit: int, cursor: str | None,
) -> Page[TokenMatch]:  # fmt: skip
    query = select(src.feature_id, src.token_str, src.token_id, src.rank, src.value).where(
        src.token_str == bindparam("token_str"), *src.where
    )
    if sae_id is not None:
        query = query.join(Feature, Feature.id == src.feature_id).where(Feature.sae_id == sae_id)
    if cursor is not None:
        value, feature_id = decode_cursor(cursor, ordering, (float, int)).key
        query = query.where(
            or_(src.value < value, and_(src.value == value, src.feature_id < feature_id))
        )
    query = query.order_by(src.value.desc(), src.feature_id.desc()).limit(bindparam("n"))

    def order_key(row) -> tuple[float, int]:  # ascending = the order of the results
        return (-row[4], -row[0])

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
        best = _strongest(session, src, {r[0] for r in rows}, variants)
        picked: list[Any] = []
        seen: set[int] = set()
        for row in rows:
            # A feature counts at its strongest spelling only (as in search_by_token).
            if row[0] in seen or row[4] != best[row[0]]:
                continue
            seen.add(row[0])
            picked.append(row)
            if len(picked) > limit:
                break
        if len(picked) > limit or frontier is None:
            break
        batch *= 4
    ids = [r[0] for r in picked[:limit]]
    by_id = {f.id: f for f in feature_views(run(session, _FEATURES_BY_ID, ids=ids))}
    items = [TokenMatch(by_id[r[0]], r[1], r[2], r[3], r[4]) for r in picked[:limit]]
    token_out = None
    if len(picked) > limit:
        last = picked[limit - 1]
        token_out = encode_cursor(Cursor(ordering, (last[4], last[0])))
    return Page(items, token_out)


def _strongest(session: Session, src: _Source, ids: set[int], variants: list[str]) -> dict:
    """Each feature's largest value over the spellings `variants`."""
    if not ids:
        return {}
    query = (
        select(src.feature_id, func.max(src.value))
        .where(src.feature_id.in_(sorted(ids)), src.token_str.in_(variants), *src.where)
        .group_by(src.feature_id)
    )
    return dict(run(session, query).all())


_FEATURES_BY_ID = select(*FEATURE_VIEW_COLUMNS).where(
    Feature.id.in_(bindparam("ids", expanding=True))
)
