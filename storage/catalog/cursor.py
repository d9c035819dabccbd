"""Opaque keyset cursors: base64url of a small JSON object, signed with the server's secret.

A cursor records the last row's sort key and the ordering it was made for, so a cursor
replayed with a different `sort`/`order` is refused instead of silently skipping rows.
Floats round-trip exactly through JSON (repr), which keyset equality needs.

The HMAC makes a cursor something only this server can mint: a hand-made one (a key of
10^30, a date that is not one, an id that makes a search walk every label) is refused
before any query runs (400). Every process serving one catalog must share the secret:
it comes from the `cursor_secret` setting, else from `$SAEFEAT_HOME/secret` (created
once, mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saefeat.errors import SpecError

SECRET_FILE = "secret"
_SIG_BYTES = 16  # 128 bits of HMAC-SHA256
# Key parts must fit the columns they are compared with (64-bit integers, short strings).
_INT_RANGE = (-(2**63), 2**63 - 1)
_MAX_STR = 200
_secret: bytes | None = None


class InvalidCursorError(SpecError):
    """The cursor was not made by this API for this query (400)."""

    status_code = 400

    def __init__(self, message: str):
        super().__init__(message, field="cursor")


@dataclass(frozen=True)
class Cursor:
    ordering: str  # e.g. "density:desc" or "search:top"
    key: tuple[Any, ...]  # the last row's sort key


def load_secret(home: Path, configured: str | None = None) -> bytes:
    """The configured secret, else the one in `home`/secret, made on first use.

    Written to a private temporary file and linked into place, so concurrent first
    starts agree on one secret and nobody reads a half-written file."""
    if configured:
        return configured.encode()
    path = Path(home) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    return path.read_bytes().strip()


def use_secret(secret: bytes) -> None:
    """Sign and check cursors with `secret` from now on (the API sets it at start-up)."""
    global _secret
    if not secret:
        raise ValueError("the cursor secret must not be empty")
    _secret = secret


def _key() -> bytes:
    if _secret is None:  # a CLI or script: the same secret as the server on this home
        from saefeat.config import get_settings

        settings = get_settings()
        use_secret(load_secret(settings.home, settings.cursor_secret))
    assert _secret is not None
    return _secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(payload: str) -> str:
    return _b64(hmac.new(_key(), payload.encode(), hashlib.sha256).digest()[:_SIG_BYTES])


def encode_cursor(cursor: Cursor) -> str:
    raw = json.dumps({"o": cursor.ordering, "k": list(cursor.key)}, separators=(",", ":"))
    payload = _b64(raw.encode())
    return f"{payload}.{_sign(payload)}"


def _valid_part(value: Any, kind: type) -> bool:
    # bool is an int in Python but never a valid key part; ints are valid floats.
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        return False
    if kind is float:
        return math.isfinite(value)
    if kind is int:
        return _INT_RANGE[0] <= value <= _INT_RANGE[1]
    return kind is not str or len(value) <= _MAX_STR


def decode_cursor(text: str, ordering: str, types: tuple[type, ...]) -> Cursor:
    """Parse `text`; it must carry this server's signature, be for `ordering` and hold a
    key of these `types`."""
    hint = "pass back the next_cursor of the previous page unchanged, or omit cursor"
    payload, _, signature = text.partition(".")
    if not signature or not hmac.compare_digest(signature.encode(), _sign(payload).encode()):
        raise InvalidCursorError(f"the cursor was not made by this server, or was altered; {hint}")
    try:
        data = json.loads(_unb64(payload))
        made_for, key = data["o"], data["k"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise InvalidCursorError(f"the cursor is malformed; {hint}") from exc
    if made_for != ordering:
        raise InvalidCursorError(
            f"the cursor was made for ordering {made_for!r}, not {ordering!r}; {hint}"
        )
    if not isinstance(key, list) or len(key) != len(types):
        raise InvalidCursorError(f"the cursor is malformed; {hint}")
    if not all(_valid_part(value, kind) for value, kind in zip(key, types, strict=True)):
        raise InvalidCursorError(f"the cursor is malformed; {hint}")
    values = (float(v) if k is float else v for v, k in zip(key, types, strict=True))
    return Cursor(ordering, tuple(values))
