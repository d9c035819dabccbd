"""Artifact features: ones that fire on *where* a token is, not on what it is.

A feature is flagged at index time (workers/index.py; stored as `features.artifact`,
the reason, NULL for none) from its top examples, each weighted by its activation:

  * "after special token X": at least `ARTIFACT_SHARE` of the activation mass is on
    tokens right after a special token of the tokenizer (BOS, `<|im_start|>`, ...);
    X is the special token most of that mass follows;
  * "position <= 2": at least `ARTIFACT_SHARE` of the mass is at positions 0..2 of
    their contexts (the attention sink and the tokens right after it);
  * "position P": at least `ARTIFACT_SHARE` of the mass is at the one position P.

Checked in that order (the first that holds is the reason), and only for features with
at least `MIN_EXAMPLES` top examples: three windows at one place prove nothing. With
`bos="context"` packing every context starts with BOS, so a feature that fires on the
first token of every context meets the first two rules at once.

Flagged features stay in the catalog and on their pages, with the reason shown; the
readable pick (features/readable.py) and the default feature lists leave them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from saefeat.features.records import FeatureExample

ARTIFACT_SHARE = 0.8  # share of the top examples' activation mass
EARLY_POSITION = 2  # positions 0..EARLY_POSITION count as "fixed early positions"
MIN_EXAMPLES = 4
REASON_MAX_CHARS = 80  # features.artifact is String(80)


def special_token_ids(tokenizer) -> list[int]:
    """The tokenizer's special ids (BOS, EOS, chat markers, ...), BOS and EOS included
    even where a tokenizer leaves them out of `all_special_ids`."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    return sorted(i for i in ids if i >= 0)


def flag_artifacts(
    d_sae: int,
    examples: Iterable[FeatureExample],
    previous_ids: Sequence[int],
    special_ids: Iterable[int],
    strings: Sequence[str],
) -> list[str | None]:
    """Each feature's artifact reason (None: not an artifact), from its top examples.

    `examples`: the top examples (other kinds are skipped); `previous_ids[i]`: the token
    id before example i's focus in its context (-1 at position 0), in the same order;
    `strings`: each token id as text, for naming the special token."""
    tops = sorted(
        ((e, p) for e, p in zip(examples, previous_ids, strict=True) if e.kind == "top"),
        key=lambda t: t[0].feature_index,
    )
    out: list[str | None] = [None] * d_sae
    if not tops:
        return out
    f = np.fromiter((e.feature_index for e, _ in tops), np.int64, len(tops))
    mass = np.fromiter((max(e.activation, 0.0) for e, _ in tops), np.float64, len(tops))
    pos = np.fromiter((e.position for e, _ in tops), np.int64, len(tops))
    prev = np.fromiter((p for _, p in tops), np.int64, len(tops))
    special = np.asarray(sorted(set(special_ids)), np.int64)
    after_special = np.isin(prev, special) & (prev >= 0)
    # Each feature's examples are the slice start[i]:start[i + 1] (sorted by feature).
    start = np.searchsorted(f, np.arange(d_sae + 1))

    total = np.bincount(f, weights=mass, minlength=d_sae)
    count = np.diff(start)
    enough = (count >= MIN_EXAMPLES) & (total > 0)
    safe = np.maximum(total, 1e-30)

    def share(where: np.ndarray) -> np.ndarray:
        return np.bincount(f[where], weights=mass[where], minlength=d_sae) / safe

    def heaviest(values: np.ndarray, weights: np.ndarray) -> int:
        """The value carrying the most weight."""
        found, inverse = np.unique(values, return_inverse=True)
        return int(found[np.argmax(np.bincount(inverse, weights=weights))])

    after = share(after_special)
    early = share(pos <= EARLY_POSITION)
    # The largest mass at any one position, per feature.
    width = int(pos.max()) + 1
    keys, inverse = np.unique(f * width + pos, return_inverse=True)
    best_position = np.zeros(d_sae)
    np.maximum.at(best_position, keys // width, np.bincount(inverse, weights=mass))
    one = best_position / safe

    flagged = enough & ((after >= ARTIFACT_SHARE) | (early >= ARTIFACT_SHARE)
                        | (one >= ARTIFACT_SHARE))  # fmt: skip
    for i in np.nonzero(flagged)[0].tolist():
        mine = slice(start[i], start[i + 1])
        if after[i] >= ARTIFACT_SHARE:
            special_mass = np.where(after_special[mine], mass[mine], 0.0)
            token = heaviest(prev[mine], special_mass)
            name = strings[token] if 0 <= token < len(strings) else str(token)
            out[i] = _reason(f"after special token {name!r}")
        elif early[i] >= ARTIFACT_SHARE:
            out[i] = f"position <= {EARLY_POSITION}"
        elif one[i] >= ARTIFACT_SHARE:
            out[i] = f"position {heaviest(pos[mine], mass[mine])}"
    return out


def _reason(text: str) -> str:
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 1] + "…"
