"""The Alembic revisions build exactly the models' schema, and tear it down, on both DBs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select
from synthetic_catalog import synthetic_feature_index

from saefeat.storage.catalog.db import (
    current_revision,
    downgrade,
    include_object,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.models import (
    SAE,
    Base,
    Feature,
    FeatureExampleRow,
    Label,
    VocabToken,
)
from saefeat.storage.catalog.writer import write_feature_index

READABLE = ("token_effects", "fired_tokens")  # revision 0013
TABLES = {
    "language_models",
    "jobs",
    "activation_sets",
    "activation_shards",
    "saes",
    "features",
    "feature_examples",
    "vocab_tokens",
    *READABLE,
    "neighbours",
    "labels",
    "api_keys",
    "label_votes",
    "contrasts",
    "contrast_features",
    "explanations",
    "explanation_scores",
}
HEAD = "0016"  # the newest revision


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    """Mapped tables only: FTS5's virtual and shadow tables are checked by _has_fts."""
    with _engine(url) as engine:
        names = set(inspect(engine).get_table_names()) - {"alembic_version"}
    return {n for n in names if not n.startswith("labels_fts")}


def _has_fts(url: str) -> bool:
    """Whether revision 0002's full-text search objects exist (FTS5 table or tsvector)."""
    with _engine(url) as engine:
        inspector = inspect(engine)
        if engine.dialect.name == "sqlite":
            return "labels_fts" in inspector.get_table_names()
        if "labels" not in inspector.get_table_names():
            return False
        return "text_tsv" in {c["name"] for c in inspector.get_columns("labels")}


def _drift(url: str) -> list:
    with _engine(url) as engine, engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": include_object}
        )
        return compare_metadata(context, Base.metadata)


def _vocab_indexes(url: str) -> set[str]:
    with _engine(url) as engine:
        return {ix["name"] for ix in inspect(engine).get_indexes("vocab_tokens")}


def _job_columns(url: str) -> set[str]:
    with _engine(url) as engine:
        return {c["name"] for c in inspect(engine).get_columns("jobs")}


def _check_round_trip(url: str) -> None:
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) == HEAD
    assert _tables(url) == TABLES
    assert _drift(url) == [], "models and migrations disagree: add a revision"
    assert _has_fts(url)
    assert {"owner", "lease_expires_at", "attempts"} <= _job_columns(url)
    downgrade(url, "0004")
    assert "attempts" not in _job_columns(url)
    assert _tables(url) == (TABLES | {"corpora"}) - {  # 0010 drops corpora
        "explanations",
        "explanation_scores",
        "contrasts",
        "contrast_features",
        *READABLE,
    }
    upgrade(url)
    downgrade(url, "0003")
    assert not {"owner", "lease_expires_at"} & _job_columns(url)
    upgrade(url)
    downgrade(url, "0002")
    assert _vocab_indexes(url) == {"ix_vocab_tokens_token_str_side"}
    upgrade(url)
    assert _vocab_indexes(url) == {"ix_vocab_tokens_token_str_side_value_feature_id"}
    downgrade(url, "0001")
    assert current_revision(url) == "0001"
    assert not _has_fts(url)
    assert _tables(url) == (TABLES | {"corpora"}) - {  # 0010 drops corpora
        "label_votes",
        "contrasts",
        "contrast_features",
        "explanations",
        "explanation_scores",
        *READABLE,
    }
    upgrade(url)
    assert _has_fts(url)
    downgrade(url, "base")
    assert current_revision(url) is None
    assert _tables(url) == set()
    assert not _has_fts(url)
    upgrade(url)  # and back up again from nothing
    assert _tables(url) == TABLES


def test_upgrade_and_downgrade_on_sqlite(sqlite_url):
    _check_round_trip(sqlite_url)


@pytest.mark.postgres
def test_upgrade_and_downgrade_on_postgres(postgres_url):
    _check_round_trip(postgres_url)


def test_downgrade_drops_a_populated_catalog(session, make_sae):
    sae = make_sae(session, d_sae=16)
    write_feature_index(session, sae.id, synthetic_feature_index(16, seed=1))
    url = session.get_bind().url.render_as_string(hide_password=False)
    session.close()
    downgrade(url, "base")
    assert _tables(url) == set()


def test_deleting_an_sae_cascades_to_its_features(session, make_sae):
    sae = make_sae(session, d_sae=16)
    write_feature_index(session, sae.id, synthetic_feature_index(16, seed=2))
    feature = session.scalar(select(Feature).where(Feature.sae_id == sae.id))
    add_label(session, feature, text="dogs")
    session.commit()
    session.delete(session.get(SAE, sae.id))
    session.commit()
    for model in (Feature, FeatureExampleRow, VocabToken, Label):
        assert session.scalars(select(model)).first() is None, model.__tablename__


def test_foreign_keys_are_enforced_on_sqlite(sqlite_url):
    """SQLite ignores FOREIGN KEY unless each connection asks; make_engine does."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as s:
        s.add(Feature(sae_id="missing", index=0, density=0, max_activation=0, mean_activation=0))
        with pytest.raises(Exception, match="FOREIGN KEY"):
            s.commit()
    engine.dispose()


def test_0002_indexes_labels_written_before_it(db_url_at_0001):
    """Labels already in a 0001 catalog are searchable after upgrading to 0002."""
    url = db_url_at_0001
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO saes (id, name, model_name, hook_name, architecture, d_in, d_sae, cfg,"
            " metrics, created_at) VALUES ('s', 's', 'm', 'h', 'topk', 4, 4, '{}', '{}',"
            " CURRENT_TIMESTAMP)"
        )
        connection.exec_driver_sql(
            'INSERT INTO features (sae_id, "index", density, max_activation, mean_activation)'
            " VALUES ('s', 0, 0.1, 1.0, 0.5)"
        )
        connection.exec_driver_sql(
            "INSERT INTO labels (feature_id, text, source, created_at) SELECT id,"
            " 'closing brackets', 'human', CURRENT_TIMESTAMP FROM features"
        )
    engine.dispose()
    upgrade(url)
    from saefeat.storage.catalog.label_search import search_labels

    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        assert [m.label.text for m in search_labels(s, "bracket").items] == ["closing brackets"]
    engine.dispose()


@pytest.mark.parametrize("which", ["sqlite", "postgresql"])
def test_processes_starting_together_migrate_once(which, request):
    """API workers all migrate on start: four at once on an empty catalog must leave it
    at head, with no collision (tables created twice) and no deadlock."""
    import threading

    url = request.getfixturevalue("sqlite_url" if which == "sqlite" else "postgres_url")
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            upgrade(url)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert current_revision(url) == HEAD
    assert _drift(url) == []


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_0014_marks_old_activation_scores_stale_and_rescores_headlines(db, request):
    """Activation scores stored before 0014 (standard deviations, e.g. 5.13) become
    `activation_sd`, out of every headline; each auto label's score becomes the mean of
    its [0, 1] scores. Downgrading puts both back."""
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "postgres_url")
    upgrade(url, "0013")
    engine = make_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO saes (id, name, model_name, hook_name, architecture, d_in, d_sae, cfg,"
            " metrics, created_at) VALUES ('s', 's', 'm', 'h', 'topk', 4, 4, '{}', '{}',"
            " CURRENT_TIMESTAMP)"
        )
        c.exec_driver_sql(
            'INSERT INTO features (sae_id, "index", density, max_activation, mean_activation)'
            " VALUES ('s', 0, 0.1, 1.0, 0.5)"
        )
        for label_id, score in [(1, 0.9), (2, None), (3, 0.4)]:
            source = "human" if label_id == 3 else "auto"
            value = "NULL" if score is None else score
            c.exec_driver_sql(
                "INSERT INTO labels (id, feature_id, text, source, author, score, created_at)"
                f" SELECT {label_id}, id, 'l{label_id}', '{source}', 'offline', {value},"
                " CURRENT_TIMESTAMP FROM features"
            )
        for label_id in (1, 2):
            c.exec_driver_sql(
                "INSERT INTO explanations (label_id, feature_id, explainer, prompt_version,"
                f" evidence, created_at) SELECT {label_id}, id, 'offline', 'offline-v2', '{{}}',"
                " CURRENT_TIMESTAMP FROM features"
            )
        rows = [(1, "detection", 0.9), (1, "embedding", 0.7), (1, "activation", 5.13),
                (2, "activation", -0.34)]  # fmt: skip
        for label_id, kind, value in rows:
            c.exec_driver_sql(
                "INSERT INTO explanation_scores (label_id, type, value, n, details,"
                f" prompt_version, created_at) VALUES ({label_id}, '{kind}', {value}, 10, '{{}}',"
                " 'v', CURRENT_TIMESTAMP)"
            )
    engine.dispose()

    def state():
        engine = make_engine(url)
        with engine.connect() as c:
            types = sorted(c.exec_driver_sql("SELECT label_id, type FROM explanation_scores"))
            scores = dict(c.exec_driver_sql("SELECT id, score FROM labels").all())
        engine.dispose()
        return [tuple(t) for t in types], {k: v and round(v, 6) for k, v in scores.items()}

    upgrade(url)
    types, scores = state()
    assert (1, "activation_sd") in types and (2, "activation_sd") in types
    assert not any(t == "activation" for _, t in types)
    assert scores == {1: 0.8, 2: None, 3: 0.4}  # mean of 0.9 and 0.7; a human label untouched
    downgrade(url, "0013")
    types, scores = state()
    assert (1, "activation") in types and scores == {1: 0.9, 2: None, 3: 0.4}
