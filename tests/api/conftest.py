"""API fixtures: the real app on a SQLite file in tmp_path, with a seeded catalog and keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from synthetic_catalog import register_test_sae, synthetic_feature_index

from saefeat.api.app import create_app
from saefeat.config import Settings
from saefeat.features.records import FeatureIndex
from saefeat.storage.catalog.keys import create_api_key, revoke_api_key, verify_api_key
from saefeat.storage.catalog.writer import write_feature_index


@pytest.fixture
def make_settings(tmp_path, migrated_sqlite_url) -> Callable[..., Settings]:
    """make_settings(**overrides): settings for a fresh, migrated SQLite catalog."""

    def make(**overrides) -> Settings:
        values = {
            "home": tmp_path,
            "database_url": migrated_sqlite_url,
            "require_read_key": False,
            "bootstrap_api_key": None,
        }
        return Settings(**(values | overrides))

    return make


@pytest.fixture
def app(make_settings) -> FastAPI:
    return create_app(make_settings())


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def db(app) -> Iterator[Session]:
    with app.state.sessionmaker() as session:
        yield session


@dataclass
class Seeded:
    indexes: dict[str, FeatureIndex]  # sae id -> what was written


def seed_catalog(session: Session) -> Seeded:
    indexes = {}
    for sae_id, d_sae, seed in (("sae-a", 57, 1), ("sae-b", 8, 2)):
        metrics = {"fvu": 0.21, "l0": 8.0}
        name = f"SmolLM2 L6 {sae_id}"
        register_test_sae(session, sae_id, d_sae, name=name, cfg={"k": 8}, metrics=metrics)
        session.commit()
        index = synthetic_feature_index(d_sae, n_examples=4, n_quantile=2, seed=seed)
        write_feature_index(session, sae_id, index)
        indexes[sae_id] = index
    return Seeded(indexes)


@pytest.fixture
def catalog(db) -> Seeded:
    return seed_catalog(db)


@pytest.fixture
def keys(db) -> dict[str, str]:
    """Plaintext keys by role: label, explain (the explainer's: label + explain), read,
    admin, revoked."""
    made = {
        "label": create_api_key(db, "labeller", ["label"]),
        "explain": create_api_key(db, "explainer", ["label", "explain"]),
        "read": create_api_key(db, "reader", ["read"]),
        "admin": create_api_key(db, "admin", ["admin"]),
        "revoked": create_api_key(db, "gone", ["label"]),
    }
    revoke_api_key(db, verify_api_key(db, made["revoked"]).id)
    db.commit()
    return made
