"""The label search language, parsed once and compiled to FTS5 or to a PostgreSQL tsquery.

Web-search style, as people type it: words (all must match), "quoted phrases",
`OR` between alternatives, `-word` to exclude, `word*` for a prefix. Parsing here
rather than handing the text to the database means both databases accept the same
queries, and a malformed one is a SpecError naming the problem (422), never a database
syntax error (500).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saefeat.errors import SpecError

MAX_QUERY_CHARS = 200
MAX_TERMS = 16
_WORD = re.compile(r"\w+", re.UNICODE)
_TOKEN = re.compile(r'\s*(-?)("([^"]*)"|[^\s"]+)')


@dataclass(frozen=True)
class Term:
    words: tuple[str, ...]  # one word, or a phrase
    negated: bool = False
    prefix: bool = False


# A query is an OR of groups; each group is an AND of terms.
Query = list[list[Term]]


def _bad(message: str) -> SpecError:
    return SpecError(message, field="q")


def _term(raw: str, quoted: bool, negated: bool) -> Term | None:
    prefix = not quoted and raw.endswith("*")
    words = tuple(w.lower() for w in _WORD.findall(raw))
    if not words:
        return None  # punctuation only: nothing to search for
    if prefix and len(words) > 1:
        raise _bad(f"prefix search ('{raw}') works on one word only")
    return Term(words, negated=negated, prefix=prefix)


def parse_query(text: str) -> Query:
    """Parse `text`, or raise SpecError(field="q") saying what is wrong with it."""
    text = text.strip()
    if not text:
        raise _bad("is empty; type one or more words to search the labels for")
    if len(text) > MAX_QUERY_CHARS:
        raise _bad(f"has {len(text)} characters; at most {MAX_QUERY_CHARS}")
    if text.count('"') % 2:
        raise _bad('has an unclosed quote; close the "phrase" or remove the quote')
    groups: Query = [[]]
    pos, n_terms = 0, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # only trailing spaces are left
            break
        pos = match.end()
        negated, whole, phrase = match.group(1) == "-", match.group(2), match.group(3)
        if whole == "OR" and not negated:
            if not groups[-1]:
                raise _bad("has OR with nothing before it; put a word on each side of OR")
            groups.append([])
            continue
        term = _term(phrase if phrase is not None else whole, phrase is not None, negated)
        if term is None:
            continue
        n_terms += 1
        groups[-1].append(term)
    if not groups[-1] and len(groups) > 1:
        raise _bad("ends with OR; put a word on each side of OR")
    if n_terms == 0:
        raise _bad("has no words to search for (only punctuation or operators)")
    if n_terms > MAX_TERMS:
        raise _bad(f"has {n_terms} terms; at most {MAX_TERMS}")
    for group in groups:
        if all(term.negated for term in group):
            raise _bad("excludes words (-word) without any word to find; add a word to match")
    return groups


def _fts5_term(term: Term) -> str:
    # Every word goes in double quotes: FTS5 then reads it as a string, never an operator.
    body = '"' + " ".join(term.words) + '"'
    return body + "*" if term.prefix else body


def to_fts5(query: Query) -> str:
    """The query as an FTS5 MATCH expression."""
    out = []
    for group in query:
        positive = " AND ".join(_fts5_term(t) for t in group if not t.negated)
        negative = [_fts5_term(t) for t in group if t.negated]
        expr = f"({positive})"
        if negative:
            expr = f"({expr} NOT ({' OR '.join(negative)}))"
        out.append(expr)
    return " OR ".join(out)


def _ts_term(term: Term) -> str:
    # Quoted lexemes: to_tsquery stems them but never parses them as operators.
    parts = [f"'{w}'" + (":*" if term.prefix else "") for w in term.words]
    body = " <-> ".join(parts)
    body = f"({body})" if len(parts) > 1 else body
    return f"!{body}" if term.negated else body


def to_tsquery(query: Query) -> str:
    """The query as PostgreSQL to_tsquery('english', ...) text."""
    return " | ".join("(" + " & ".join(_ts_term(t) for t in group) + ")" for group in query)
