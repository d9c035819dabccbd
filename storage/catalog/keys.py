"""API keys: created once in plaintext, stored only as a sha256 hash, checked by scope."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.errors import NotFoundError, SpecError
from saefeat.storage.catalog.models import API_SCOPES, ApiKey, utcnow

KEY_PREFIX = "sfk_"
SHOWN_PREFIX_LEN = 8  # what people see to tell keys apart, e.g. "sfk_AbCd"


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    scopes = list(dict.fromkeys(scopes))  # keep order, drop repeats
    bad = [s for s in scopes if s not in API_SCOPES]
    if bad or not scopes:
        raise SpecError(
            f"got {bad or scopes!r}; use one or more of {list(API_SCOPES)}", field="scopes"
        )
    return scopes


def _store(session: Session, name: str, plaintext: str, scopes: list[str]) -> ApiKey:
    key = ApiKey(
        name=name,
        key_hash=hash_key(plaintext),
        prefix=plaintext[:SHOWN_PREFIX_LEN],
        scopes=scopes,
    )
    session.add(key)
    session.flush()
    return key


def create_api_key(session: Session, name: str, scopes: Iterable[str]) -> str:
    """Store a new key and return its plaintext, which is never retrievable again.

    The caller commits. Format: "sfk_" + 32 URL-safe characters (192 random bits).
    """
    checked = _check_scopes(scopes)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(24)
    _store(session, name, plaintext, checked)
    return plaintext


def ensure_api_key(session: Session, name: str, plaintext: str, scopes: Iterable[str]) -> ApiKey:
    """Store a key whose plaintext the operator chose (the bootstrap key); idempotent.

    A revoked key stays revoked: restarting the service must not bring it back.
    """
    checked = _check_scopes(scopes)
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if existing is not None:
        return existing
    return _store(session, name, plaintext, checked)


def verify_api_key(session: Session, plaintext: str) -> ApiKey | None:
    """The live key with this plaintext, or None if unknown or revoked."""
    if not plaintext:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if key is None or key.revoked_at is not None:
        return None
    return key


def has_scope(key: ApiKey, scope: str) -> bool:
    # "admin" can do everything the other scopes allow.
    return scope in key.scopes or "admin" in key.scopes


def revoke_api_key(session: Session, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError(f"no API key with id {key_id}", field="key_id")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key
