"""Which features a person would find meaningful: the demo's pick, with its criterion.

A feature is a candidate when
  * its density on typical tokens is in [0.1%, 5%]: rarer ones have too few examples to
    read, denser ones fire on everything;
  * its max activation is at most `SINK_FACTOR` x the candidates' median max: a feature
    whose activations are tens of times everyone else's is a sink/massive-token feature
    (these are excluded from indexing now, so this is a second guard for old indexes);
  * it is not flagged as an artifact (features/artifacts.py: fires at fixed positions
    or right after special tokens), and no top example sits at position 0 or 1 (the
    attention sink and the token after it; a guard for indexes made before the flag);
  * its top examples are concentrated: the share of them whose focus token is the same
    string (the "top-token mass") is at least `MIN_TOP_TOKEN_MASS`, and that token has a
    letter in it (a feature for newlines, spaces, digits or dashes reads as noise).
Candidates are ranked by top-token mass, then density, and the picks have distinct
dominant tokens, so five features show five different things.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

MIN_DENSITY, MAX_DENSITY = 1e-3, 0.05
SINK_FACTOR = 5.0
MIN_TOP_TOKEN_MASS = 0.5


@dataclass
class Candidate:
    feature: object  # a catalog feature row
    examples: list  # its examples, top ones first
    top_token: str
    mass: float


def top_token_mass(examples: list) -> tuple[str, float]:
    tops = [e.token_strs[e.focus] for e in examples if e.kind == "top"]
    if not tops:
        return "", 0.0
    token, n = Counter(t.strip().lower() or t for t in tops).most_common(1)[0]
    return token, n / len(tops)


def pick_readable(features: list, examples_of, n: int = 5) -> list[Candidate]:
    """`features`: catalog rows with density and max_activation; `examples_of(row)`: its
    examples. Returns up to n candidates, best first."""
    if not features:
        return []
    limit = SINK_FACTOR * float(np.median([f.max_activation for f in features]))
    found = []
    for f in features:
        if f.max_activation > limit or getattr(f, "artifact", None):
            continue
        examples = examples_of(f)
        if any(e.kind == "top" and e.position <= 1 for e in examples):
            continue
        token, mass = top_token_mass(examples)
        if mass >= MIN_TOP_TOKEN_MASS and any(ch.isalpha() for ch in token):
            found.append(Candidate(f, examples, token, mass))
    found.sort(key=lambda c: (-c.mass, -c.feature.density))
    picks, seen = [], set()
    for c in found:
        if c.top_token not in seen:
            picks.append(c)
            seen.add(c.top_token)
        if len(picks) == n:
            break
    return picks
