"""Reads over the text of top examples: features by a phrase in the windows they fire
on, and the count of repeated windows (what bench/readable.py reports; 0 once indexing
keeps one window once, features/distinct.py).

Phrase search needs no explanation and no index of its own: a window's text is its
tokens joined, matched case-insensitively in the database over the stored JSON text
(`_SCAN_SQL`) and checked again in Python. Top examples are read in
(feature id, rank) order off the (feature_id, kind, rank) index in growing batches, and
a request reads at most `max_scan` of them: a page ends there with a cursor to go on,
so a rare phrase costs a bounded read per request however large the catalog.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.features.records import FeatureExample
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.models import Feature, FeatureExampleRow
from saefeat.storage.catalog.queries import (
    FeatureView,
    Page,
    check_search,
    features_by_id,
    require_sae,
    run,
)

MAX_PHRASE_CHARS = 200
MAX_SCAN = 50_000  # top examples one request reads at most (docs/SECURITY.md, fixed limits)
FIRST_BATCH, MAX_BATCH = 2_000, 20_000
_WHOLE_FEATURE = 2**31 - 1  # a cursor rank: the feature is done

# The examples' token lists as stored: JSON text, '["The", " cat"]'. Joined without the
# separators it holds the window's text, JSON-escaped, so the escaped phrase is looked for
# there (instr/strpos over lower(): `%` and `_` mean themselves, and no JSON function
# runs per row: building the text with json_each cost ~100 us a row on SQLite). A hit is
# checked again on the decoded tokens (`_matches`), so the raw test only has to find
# every real match.
_RAW = {"sqlite": "x.token_strs", "postgresql": "x.token_strs::text"}
_FIND = {"sqlite": "instr", "postgresql": "strpos"}
_JOINED = "lower(replace(replace({raw}, '\", \"', ''), '\",\"', ''))"
_SCAN_SQL = """
SELECT x.id, x.feature_id, x.rank, {hit}
FROM feature_examples AS x
WHERE x.kind = 'top' {in_sae} AND (x.feature_id > :after_feature
      OR (x.feature_id = :after_feature AND x.rank > :after_rank))
ORDER BY x.feature_id, x.kind, x.rank
LIMIT :batch
"""


def _scan_statement(dialect: str, by_sae: bool, both_spellings: bool):
    """(id, feature id, rank, hit) of the next `batch` top examples after the cursor;
    the hit test is the only per-row work (one column, evaluated once)."""
    in_sae = (
        "AND x.feature_id IN (SELECT id FROM features WHERE sae_id = :sae_id)" if by_sae else ""
    )
    joined = _JOINED.format(raw=_RAW[dialect])
    hit = f"{_FIND[dialect]}({joined}, :ascii) > 0"
    if both_spellings:
        hit = f"({hit} OR {_FIND[dialect]}({joined}, :unicode) > 0)"
    return text(_SCAN_SQL.format(hit=hit, in_sae=in_sae))


_HITS = (
    select(FeatureExampleRow.id, FeatureExampleRow.activation, FeatureExampleRow.focus,
           FeatureExampleRow.token_strs)
    .where(FeatureExampleRow.id.in_(bindparam("ids", expanding=True)))
)  # fmt: skip


def _escaped(phrase: str) -> dict[str, str]:
    """The lower-cased phrase as it reads inside JSON text, with \\u escapes and without."""
    low = phrase.lower()
    return {"ascii": json.dumps(low)[1:-1], "unicode": json.dumps(low, ensure_ascii=False)[1:-1]}


@dataclass
class PhraseMatch:
    """A feature with a top example whose window holds the phrase at its focus token."""

    feature: FeatureView
    rank: int  # the example's rank among the feature's top examples
    activation: float
    token_strs: list[str]
    focus: int


def _matches(tokens: list[str], focus: int, phrase: str, anywhere: bool) -> bool:
    """Whether `phrase` (case-insensitive) occurs in the window and, unless `anywhere`,
    overlaps its focus token."""
    text = "".join(tokens).lower()
    start = sum(len(t) for t in tokens[:focus])
    end = start + max(len(tokens[focus]), 1)
    needle = phrase.lower()
    at = text.find(needle)
    while at >= 0:
        if anywhere or (at < end and at + len(needle) > start):
            return True
        at = text.find(needle, at + 1)
    return False


def check_phrase(phrase: str) -> str:
    if not phrase.strip():
        raise SpecError("must not be blank", field="phrase")
    if len(phrase) > MAX_PHRASE_CHARS:
        raise SpecError(f"has {len(phrase)} characters; at most {MAX_PHRASE_CHARS}",
                        field="phrase")  # fmt: skip
    if "\x00" in phrase:
        raise SpecError("must not contain NUL", field="phrase")
    return phrase


def search_phrase(
    session: Session,
    phrase: str,
    *,
    sae_id: str | None = None,
    anywhere: bool = False,
    limit: int = 50,
    cursor: str | None = None,
    max_scan: int = MAX_SCAN,
) -> Page[PhraseMatch]:
    """Features with a top example whose window text contains `phrase` (case-insensitive),
    in feature id order, each once with its strongest such example. By default the phrase
    must cover the example's focus token (the feature fires on it); `anywhere=True`
    accepts it anywhere in the window. Reads at most `max_scan` examples: the page then
    holds what was found, with a cursor to read on."""
    check_phrase(phrase)
    check_search(session, limit, sae_id)
    after_feature, after_rank = -1, _WHOLE_FEATURE
    if cursor is not None:
        after_feature, after_rank = decode_cursor(cursor, "phrase", (int, int)).key
    dialect = session.get_bind().dialect.name
    spellings = _escaped(phrase)
    statement = _scan_statement(dialect, sae_id is not None,
                                spellings["ascii"] != spellings["unicode"])  # fmt: skip
    params = {**spellings, **({"sae_id": sae_id} if sae_id is not None else {})}
    picked: list[tuple[int, int, float, list[str], int]] = []
    scanned, batch = 0, FIRST_BATCH
    full = exhausted = False
    last = (after_feature, after_rank)
    while True:
        size = min(batch, max_scan - scanned)
        rows = run(session, statement, after_feature=last[0], after_rank=last[1], batch=size,
                   **params).all()  # fmt: skip
        hits = {r[0] for r in rows if r[3]}
        details = {i: rest for i, *rest in run(session, _HITS, ids=sorted(hits))} if hits else {}
        for example_id, fid, rank, _ in rows:
            last = (fid, rank)
            if example_id not in details or (picked and picked[-1][0] == fid):
                continue
            activation, focus, tokens = details[example_id]
            tokens = orjson.loads(tokens) if isinstance(tokens, str | bytes) else tokens
            if _matches(tokens, focus, phrase, anywhere):
                picked.append((fid, rank, activation, tokens, focus))
                if len(picked) > limit:
                    full = True
                    break
        scanned += len(rows)
        if full:
            break
        if len(rows) < size:
            exhausted = True  # read everything after the cursor
            break
        if scanned >= max_scan:
            break  # bounded: this page ends here
        batch = min(batch * 4, MAX_BATCH)
    picked = picked[: limit + 1]
    next_cursor = None
    if full:
        next_cursor = encode_cursor(Cursor("phrase", (picked[limit - 1][0], _WHOLE_FEATURE)))
    elif not exhausted:
        # Stopped by the scan bound: go on after the last example read (past its feature
        # if that one is already on this page).
        fid, rank = last
        if picked and picked[-1][0] == fid:
            rank = _WHOLE_FEATURE
        next_cursor = encode_cursor(Cursor("phrase", (fid, rank)))
    picked = picked[:limit]
    ids = [p[0] for p in picked]
    by_id = features_by_id(session, ids)
    items = [PhraseMatch(by_id[fid], rank, act, toks, focus)
             for fid, rank, act, toks, focus in picked]  # fmt: skip
    return Page(items, next_cursor)


def duplicate_top_windows(session: Session, sae_id: str) -> int:
    """How many of the SAE's top examples repeat, within their feature, a stronger one's
    window: the same tokens with the same focus, or the same context with the focus
    tokens at most the window's half-width apart (the windows share most of their
    text). 0 when every window shows once (features/distinct.py)."""
    require_sae(session, sae_id)
    x = FeatureExampleRow
    query = (
        select(Feature.index, x.rank, x.context_index, x.position, x.focus, x.token_ids)
        .join(Feature, Feature.id == x.feature_id)
        .where(Feature.sae_id == sae_id, x.kind == "top")
        .order_by(x.feature_id, x.rank)
    )
    examples = (
        FeatureExample(f, rank, 0.0, ctx, pos, ids, [], [], focus, "top")
        for f, rank, ctx, pos, focus, ids in run(session, query)
    )
    return repeated_windows(examples)


def repeated_windows(examples: Iterable[FeatureExample]) -> int:
    """How many top examples, in the order given (each feature's by rank), repeat an
    earlier top example of the same feature: the same tokens and focus, or the same
    context with focus tokens at most the window half-width apart."""
    windows: dict[int, set] = {}
    places: dict[tuple[int, int], list[tuple[int, int]]] = {}
    repeats = 0
    for e in examples:
        if e.kind != "top":
            continue
        half = max(e.focus, len(e.token_ids) - 1 - e.focus)
        mine = windows.setdefault(e.feature_index, set())
        near = places.setdefault((e.feature_index, e.context_index), [])
        window = (e.focus, tuple(e.token_ids))
        close = e.context_index >= 0 and any(abs(p - e.position) <= max(half, h) for p, h in near)
        repeats += window in mine or close
        mine.add(window)
        near.append((e.position, half))
    return repeats
