"""Token search three ways, none needing an explanation: features by the tokens they
fire on (`fired_tokens`: a token's share of the activation mass of the top examples),
by what their decoder row promotes (`vocab_tokens`, the default), and by their
measured effect on the next token (`token_effects`, method "measured", side "up").

Every way reads one spelling's entries (`token_variants`) off its (token_str, ...,
value, feature_id) index in result order, `batch` at a time, and merges the spellings;
only entries no later than the earliest cut-off of a truncated spelling are certain, so
a short page reads more. A request reads about a page of rows per spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, bindparam, func, literal, or_, select
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.models import VOCAB_SIDES, Feature, FiredToken, TokenEffect, VocabToken
from saefeat.storage.catalog.queries import FeatureView, Page, check_search, features_by_id, run

SearchBy = Literal["fires", "promotes", "effect"]
SEARCH_BY: tuple[str, ...] = ("fires", "promotes", "effect")
# Tokenizers spell a leading space differently: decoded text " cat", byte-level BPE
# (GPT-2, Llama 3, SmolLM) "Ġcat", SentencePiece (Llama 2, Gemma) "▁cat".
SPACE_MARKERS = (" ", "Ġ", "▁")


@dataclass
class TokenMatch:
    """A feature whose token list (projection, fired tokens, effect) holds the searched
    token."""

    feature: FeatureView
    token_str: str  # the spelling that matched
    token_id: int
    rank: int  # position in the feature's list (0 = strongest)
    value: float


def token_variants(token: str, *, exact: bool = False) -> list[str]:
    """Spellings that count as the same token: the string itself, and the same word with
    no leading-space marker or with each of " ", "Ġ", "▁". One leading marker is stripped
    from the query first, so "cat", " cat", "Ġcat" and "▁cat" all find the same features.
    """
    if exact:
        return [token]
    core = token[1:] if len(token) > 1 and token[0] in SPACE_MARKERS else token
    return list(dict.fromkeys([token, core, *(marker + core for marker in SPACE_MARKERS)]))


_MATCH_COLUMNS = ("feature_id", "token_str", "token_id", "rank", "value")


@dataclass(frozen=True)
class _Source:
    """A token table as the search reads it: its columns, the rows that count, and the
    direction of strongest first (largest value, or most negative)."""

    feature_id: Any
    token_str: Any
    token_id: Any
    rank: Any
    value: Any
    where: tuple[ColumnElement, ...]
    descending: bool = True

    def columns(self) -> list[Any]:
        """The columns of a match, under the names of TokenMatch's fields."""
        return [getattr(self, name).label(name) for name in _MATCH_COLUMNS]


_SOURCES = {
    "fires": _Source(FiredToken.feature_id, FiredToken.token_str, literal(-1), FiredToken.rank,
                     FiredToken.share, ()),
    "effect": _Source(TokenEffect.feature_id, TokenEffect.token_str, TokenEffect.token_id,
                      TokenEffect.rank, TokenEffect.value,
                      (TokenEffect.method == "measured", TokenEffect.side == "up")),
}  # fmt: skip
_PROJECTIONS = {
    side: _Source(VocabToken.feature_id, VocabToken.token_str, VocabToken.token_id,
                  VocabToken.rank, VocabToken.value, (VocabToken.side == side,),
                  descending=side == "top")
    for side in VOCAB_SIDES
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
    """Features found by `token` (see `token_variants`), strongest first: `promotes`, the
    vocabulary projection on `side` (by value descending for "top", ascending, most
    negative first, for "bottom"); `fires`, the token's share of the feature's top-example
    activation mass (token_id is -1: fired tokens are stored as text); `effect`, the
    measured rise of the token's probability. Ties by feature id in the same direction. A
    feature holding several spellings appears once, with its strongest."""
    if by not in SEARCH_BY:
        raise SpecError(f"is {by!r}; use one of {list(SEARCH_BY)}", field="by")
    if by == "promotes" and side not in VOCAB_SIDES:
        raise SpecError(f"is {side!r}; use one of {list(VOCAB_SIDES)}", field="side")
    if not token:
        raise SpecError("must not be empty", field="token")
    check_search(session, limit, sae_id)
    if by == "promotes":
        src, ordering = _PROJECTIONS[side], f"token:{side}"
    else:
        src, ordering = _SOURCES[by], f"token:{by}"
    return _search(session, src, token, ordering, sae_id, exact, limit, cursor)


def _search(
    session: Session, src: _Source, token: str, ordering: str, sae_id: str | None,
    exact: bool, limit: int, cursor: str | None,
) -> Page[TokenMatch]:  # fmt: skip
    """One page of `src`'s features holding a spelling of `token` (see search_tokens)."""
    down = src.descending
    query = select(*src.columns()).where(src.token_str == bindparam("token_str"), *src.where)
    if sae_id is not None:
        query = query.join(Feature, Feature.id == src.feature_id).where(Feature.sae_id == sae_id)
    if cursor is not None:
        value, feature_id = decode_cursor(cursor, ordering, (float, int)).key
        if down:
            query = query.where(
                or_(src.value < value, and_(src.value == value, src.feature_id < feature_id))
            )
        else:
            query = query.where(
                or_(src.value > value, and_(src.value == value, src.feature_id > feature_id))
            )
    if down:
        query = query.order_by(src.value.desc(), src.feature_id.desc())
    else:
        query = query.order_by(src.value.asc(), src.feature_id.asc())
    query = query.limit(bindparam("n"))

    def order_key(row) -> tuple[float, int]:  # ascending = the order of the results
        return (-row.value, -row.feature_id) if down else (row.value, row.feature_id)

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
        best = _strongest(session, src, {r.feature_id for r in rows}, variants)
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
    features = features_by_id(session, (r.feature_id for r in picked[:limit]))
    items = [
        TokenMatch(features[r.feature_id], r.token_str, r.token_id, r.rank, r.value)
        for r in picked[:limit]
    ]
    token_out = None
    if len(picked) > limit:
        last = picked[limit - 1]
        token_out = encode_cursor(Cursor(ordering, (last.value, last.feature_id)))
    return Page(items, token_out)


def _strongest(session: Session, src: _Source, ids: set[int], variants: list[str]) -> dict:
    """Each feature's strongest value over the spellings `variants`."""
    if not ids:
        return {}
    strongest = func.max(src.value) if src.descending else func.min(src.value)
    query = (
        select(src.feature_id, strongest)
        .where(src.feature_id.in_(sorted(ids)), src.token_str.in_(variants), *src.where)
        .group_by(src.feature_id)
    )
    return dict(run(session, query).all())
