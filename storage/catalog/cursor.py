"""Opaque keyset cursors: base64url of a small JSON object.

A cursor records the last row's sort key and the ordering it was made for, so a cursor
replayed with a different `sort`/`order` is refused instead of silently skipping rows.
Floats round-trip exactly through JSON (repr), which keyset equality needs.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from saefeat.errors import SpecError


class InvalidCursorError(SpecError):
    """The cursor was not made by this API for this query (422)."""

    def __init__(self, message: str):
        super().__init__(message, field="cursor")


@dataclass(frozen=True)
class Cursor:
    ordering: str  # e.g. "density:desc" or "search:top"
    key: tuple[Any, ...]  # the last row's sort key


def encode_cursor(cursor: Cursor) -> str:
    raw = json.dumps({"o": cursor.ordering, "k": list(cursor.key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str, ordering: str, types: tuple[type, ...]) -> Cursor:
    """Parse `text`; it must be for `ordering` and hold a key of these `types`."""
    hint = "pass back the next_cursor of the previous page unchanged, or omit cursor"
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
        made_for, key = data["o"], data["k"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise InvalidCursorError(f"the cursor is malformed; {hint}") from exc
    if made_for != ordering:
        raise InvalidCursorError(
            f"the cursor was made for ordering {made_for!r}, not {ordering!r}; {hint}"
        )
    if not isinstance(key, list) or len(key) != len(types):
        raise InvalidCursorError(f"the cursor is malformed; {hint}")
    values = []
    for value, kind in zip(key, types, strict=True):
        # bool is an int in Python but never a valid key part; ints are valid floats.
        ok = not isinstance(value, bool) and isinstance(
            value, (int, float) if kind is float else kind
        )
        if not ok or (kind is float and not math.isfinite(value)):
            raise InvalidCursorError(f"the cursor is malformed; {hint}")
        values.append(float(value) if kind is float else value)
    return Cursor(ordering, tuple(values))
