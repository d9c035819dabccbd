"""Catalog fixtures: a migrated SQLite file per test, and a throwaway PostgreSQL database
on the local Debian cluster (started if it is down)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from sqlalchemy.orm import Session
from synthetic_catalog import register_test_sae

from saefeat.storage.catalog.cursor import use_secret
from saefeat.storage.catalog.db import make_engine, make_sessionmaker, upgrade
from saefeat.storage.catalog.models import SAE

PG_ROLE = "saefeat_test"
PG_PASSWORD = "saefeat_test"


@pytest.fixture(autouse=True)
def _cursor_secret() -> None:
    """Cursors are signed; these tests sign with a fixed secret, not one in a home folder."""
    use_secret(b"catalog-tests")


@dataclass(frozen=True)
class PostgresServer:
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{PG_ROLE}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"


def _as_postgres(sql: str, port: int) -> str:
    """Run one SQL statement through psql as the postgres superuser."""
    psql = ["psql", "-p", str(port), "-v", "ON_ERROR_STOP=1", "-tAc", sql]
    if os.geteuid() == 0:
        command = ["su", "postgres", "-c", shlex.join(psql)]
    else:
        command = ["sudo", "-n", "-u", "postgres", *psql]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _debian_cluster() -> tuple[str, str, int, str]:
    """(version, name, port, status) of the first cluster pg_lsclusters lists."""
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    clusters = [line.split() for line in listing if line.strip()]
    if not clusters:
        pytest.skip("PostgreSQL is installed but has no cluster (pg_createcluster 15 main)")
    version, name, port, status = clusters[0][:4]
    return version, name, int(port), status


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    if not (shutil.which("pg_lsclusters") and shutil.which("psql")):
        pytest.skip("PostgreSQL binaries are absent (no pg_lsclusters/psql on PATH)")
    version, name, port, status = _debian_cluster()
    if status != "online":
        # Left running afterwards: other test sessions may be using the same cluster.
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True, timeout=120)
    exists = _as_postgres(f"SELECT 1 FROM pg_roles WHERE rolname = '{PG_ROLE}'", port)
    if exists != "1":
        _as_postgres(f"CREATE ROLE {PG_ROLE} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'", port)
    else:
        _as_postgres(f"ALTER ROLE {PG_ROLE} CREATEDB", port)
    # DROP DATABASE ... WITH (FORCE) ends every backend on the database, an autovacuum
    # worker included, which only a member of pg_signal_backend may do.
    _as_postgres(f"GRANT pg_signal_backend TO {PG_ROLE}", port)
    return PostgresServer(port)


def _admin(server: PostgresServer, sql: str) -> None:
    # As the test role (CREATEDB) over TCP: much cheaper than a psql process per test.
    with psycopg.connect(
        host="127.0.0.1",
        port=server.port,
        user=PG_ROLE,
        password=PG_PASSWORD,
        dbname="postgres",
        autocommit=True,
    ) as connection:
        connection.execute(sql)


def _new_postgres_database(server: PostgresServer, template: str | None = None) -> str:
    database = f"saefeat_test_{uuid.uuid4().hex[:12]}"
    # template0 takes no connections, so an autovacuum worker cannot be "using" it.
    sql = f"CREATE DATABASE {database} TEMPLATE {template or 'template0'}"
    for attempt in range(20):
        try:
            _admin(server, sql)
            return database
        except psycopg.errors.ObjectInUse:  # the template is busy for a moment
            time.sleep(0.1 * (attempt + 1))
    raise RuntimeError(f"could not copy {template}: it stayed in use")


def _drop_postgres_database(server: PostgresServer, database: str) -> None:
    _admin(server, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty throwaway database."""
    database = _new_postgres_database(postgres_server)
    try:
        yield postgres_server.url(database)
    finally:
        _drop_postgres_database(postgres_server, database)


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> Iterator[str]:
    """A database migrated once; tests get copies (CREATE DATABASE ... TEMPLATE)."""
    database = _new_postgres_database(postgres_server)
    upgrade(postgres_server.url(database))
    # No connections from now on (autovacuum included), so copies never find it busy.
    _admin(postgres_server, f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
    try:
        yield database
    finally:
        _drop_postgres_database(postgres_server, database)


@pytest.fixture
def migrated_postgres_url(postgres_server, postgres_template) -> Iterator[str]:
    database = _new_postgres_database(postgres_server, template=postgres_template)
    try:
        yield postgres_server.url(database)
    finally:
        _drop_postgres_database(postgres_server, database)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A path for an empty SQLite catalog."""
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """A migrated catalog; each test using it runs on SQLite and on real PostgreSQL."""
    fixture = "migrated_sqlite_url" if request.param == "sqlite" else "migrated_postgres_url"
    return request.getfixturevalue(fixture)


def _open(url: str) -> Iterator[Session]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    yield from _open(db_url)


@pytest.fixture
def sqlite_session(migrated_sqlite_url: str) -> Iterator[Session]:
    yield from _open(migrated_sqlite_url)


@pytest.fixture
def make_sae() -> Callable[..., SAE]:
    """make_sae(session, d_sae=64, sae_id="sae-a"): register a test SAE and commit."""
    return _make_sae


def _make_sae(session: Session, d_sae: int = 64, sae_id: str = "sae-a") -> SAE:
    sae = register_test_sae(session, sae_id, d_sae)
    session.commit()
    return sae


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url_at_0001(request) -> str:
    """An empty database migrated only to revision 0001, on SQLite and on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url = request.getfixturevalue(fixture)
    upgrade(url, "0001")
    return url
