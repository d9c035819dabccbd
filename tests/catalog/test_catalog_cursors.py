"""Signed cursors: only this server's cursors are taken, and their keys stay in range."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from saefeat.storage.catalog.cursor import (
    Cursor,
    InvalidCursorError,
    decode_cursor,
    encode_cursor,
    load_secret,
    use_secret,
)


def _forge(ordering: str, key: list) -> str:
    raw = json.dumps({"o": ordering, "k": key}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_cursor_round_trips_and_any_change_is_refused():
    token = encode_cursor(Cursor("density:desc", (0.125, 7)))
    assert decode_cursor(token, "density:desc", (float, int)).key == (0.125, 7)
    payload, signature = token.split(".")
    altered = [
        _forge("density:desc", [0.125, 0]) + "." + signature,  # another key, old signature
        payload + "." + signature[:-2] + ("AA" if not signature.endswith("AA") else "BB"),
        payload,  # no signature
        "",
    ]
    for bad in altered:
        with pytest.raises(InvalidCursorError) as caught:
            decode_cursor(bad, "density:desc", (float, int))
        assert caught.value.status_code == 400 and caught.value.field == "cursor"


@pytest.mark.parametrize(
    ("ordering", "key", "types"),
    [
        ("labels:newest", [10**30], (int,)),  # beyond a 64-bit column
        ("labels:newest", [-(10**30)], (int,)),
        ("density:desc", [1e308 * 10, 1], (float, int)),  # inf
        ("jobs:newest", ["x" * 1000, "id"], (str, str)),
        ("labels:newest", [True], (int,)),
    ],
)
def test_a_signed_cursor_with_an_out_of_range_key_is_refused(ordering, key, types):
    """Even one this server signed (a key it could never have made) is checked."""
    token = encode_cursor(Cursor(ordering, tuple(key)))
    with pytest.raises(InvalidCursorError):
        decode_cursor(token, ordering, types)


def test_forged_cursors_are_refused_before_their_content_is_read():
    for key in ([10**30], ["not a date", "x"], [1]):
        with pytest.raises(InvalidCursorError, match="not made by this server"):
            decode_cursor(_forge("labels:newest", key), "labels:newest", (int,))


def test_another_secret_does_not_take_the_cursor():
    token = encode_cursor(Cursor("saes", ("sae-a",)))
    use_secret(b"another server")
    with pytest.raises(InvalidCursorError):
        decode_cursor(token, "saes", (str,))


def test_the_secret_is_made_once_private_and_reused(tmp_path):
    first = load_secret(tmp_path / "home")
    path = tmp_path / "home" / "secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(tmp_path / "home") == first and len(first) >= 32
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary left
    assert load_secret(tmp_path / "home", "configured") == b"configured"
