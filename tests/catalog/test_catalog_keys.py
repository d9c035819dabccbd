"""API keys: plaintext shown once, only the hash stored, scopes checked, revocation final."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import select

from saefeat.errors import SpecError
from saefeat.storage.catalog.keys import (
    create_api_key,
    ensure_api_key,
    has_scope,
    revoke_api_key,
    verify_api_key,
)
from saefeat.storage.catalog.models import ApiKey


def test_a_key_is_stored_only_as_its_hash(sqlite_session):
    session = sqlite_session
    plaintext = create_api_key(session, "alice", ["label"])
    session.commit()
    assert re.fullmatch(r"sfk_[A-Za-z0-9_-]{32}", plaintext)
    row = session.scalar(select(ApiKey))
    assert row.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert row.prefix == plaintext[:8]
    assert plaintext not in repr([getattr(row, c.key) for c in ApiKey.__table__.columns])
    assert create_api_key(session, "bob", ["read"]) != plaintext


def test_verify_and_revoke(sqlite_session):
    session = sqlite_session
    plaintext = create_api_key(session, "alice", ["label", "label"])
    key = verify_api_key(session, plaintext)
    assert key is not None and key.name == "alice" and key.scopes == ["label"]
    assert verify_api_key(session, plaintext + "x") is None
    assert verify_api_key(session, "") is None
    revoke_api_key(session, key.id)
    assert verify_api_key(session, plaintext) is None
    # The bootstrap path must not resurrect a revoked key.
    assert ensure_api_key(session, "again", plaintext, ["admin"]).revoked_at is not None


def test_scopes(sqlite_session):
    session = sqlite_session
    reader = verify_api_key(session, create_api_key(session, "r", ["read"]))
    admin = verify_api_key(session, create_api_key(session, "a", ["admin"]))
    assert has_scope(reader, "read") and not has_scope(reader, "label")
    assert has_scope(admin, "label") and has_scope(admin, "read")
    for bad in ([], ["write"], ["read", "root"]):
        with pytest.raises(SpecError) as caught:
            create_api_key(session, "x", bad)
        assert caught.value.field == "scopes"


def test_ensure_api_key_is_idempotent(sqlite_session):
    session = sqlite_session
    first = ensure_api_key(session, "bootstrap", "operator-chosen-secret", ["read", "label"])
    second = ensure_api_key(session, "bootstrap", "operator-chosen-secret", ["read", "label"])
    assert first.id == second.id
    assert len(session.scalars(select(ApiKey)).all()) == 1
