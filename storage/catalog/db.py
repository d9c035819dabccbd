"""Engines, sessions and schema migrations for the catalog, from a database URL."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, NullPool, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# The Alembic folder ships inside the package as saefeat.migrations (pyproject maps the
# repository's migrations/ there), so wheels and editable installs both find it.
MIGRATIONS_DIR = Path(str(files("saefeat.migrations")))


# Enough pooled connections for the API's thread pool under load: an overflow connection
# is closed after each use, and on SQLite a fresh one starts with a cold page cache.
POOL_SIZE = 20
MIGRATION_LOCK_KEY = 0x5AEFEA7  # PostgreSQL advisory lock id of "saefeat migrates"


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic filter: objects managed by hand in revisions, which autogenerate (and the
    models-vs-migrations check) must neither create nor offer to drop."""
    # FTS5 virtual tables and their shadow tables (labels_fts, labels_fts_data, ...).
    if type_ == "table" and name and ("_fts" in name or name.startswith("fts_")):
        return False
    # PostgreSQL's generated tsvector column over labels.text and its GIN index (0002).
    if type_ in ("column", "index") and name and "text_tsv" in name:
        return False
    return True


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _ensure_sqlite_folder(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLite ignores ON DELETE CASCADE unless asked per connection; WAL lets the API read
    # while a worker writes an index; busy_timeout waits for a writer instead of failing;
    # synchronous=NORMAL is WAL's usual pairing (no fsync per commit, still never corrupt).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Reads through a shared memory map instead of each connection's private page cache.
    cursor.execute("PRAGMA mmap_size=1073741824")
    cursor.close()


def _json_loads(text: str) -> Any:
    # orjson parses the examples' token lists several times faster than the json module;
    # the json module still reads what only it writes (NaN, Infinity).
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


# PostgreSQL's SQLSTATEs of a connection lost or refused: class 08, and the server going
# down or starting up (57P01-57P03). A driver-side failure to connect has none.
_UNREACHABLE_STATES = ("08", "57P01", "57P02", "57P03")
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "unable to open")


def database_unreachable(exc: BaseException) -> bool:
    """The catalog's connection failed or was lost (the database stopped or restarted,
    the network dropped, SQLite locked), as opposed to a query that is wrong: worth
    trying again later."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    if type(exc.orig).__module__.startswith("sqlite3"):  # its syntax errors are operational
        return any(words in str(exc.orig) for words in _SQLITE_TRANSIENT)
    state = getattr(exc.orig, "sqlstate", None)
    return state is None or state.startswith(_UNREACHABLE_STATES)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url` with the settings the catalog relies on (foreign keys on SQLite)."""
    kwargs.setdefault("json_deserializer", _json_loads)
    if is_sqlite(url):
        _ensure_sqlite_folder(url)
        # FastAPI serves sync routes from a thread pool.
        kwargs.setdefault("connect_args", {"check_same_thread": False})
        kwargs.setdefault("pool_size", POOL_SIZE)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", POOL_SIZE)
    # No parallel workers: catalog queries are short and many run at once, and starting a
    # worker (~10 ms) cost more than the index scans it was meant to share.
    kwargs.setdefault("connect_args", {"options": "-c max_parallel_workers_per_gather=0"})
    return create_engine(url, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects returned by query helpers stay readable after commit.
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at our migrations; the URL travels as an attribute
    so a password with '%' in it is not mangled by configparser interpolation."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    return config


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Held while migrating: API worker processes all migrate on start, and two running
    one revision at once would collide (or deadlock, on PostgreSQL). A file lock beside a
    SQLite file; a PostgreSQL advisory lock, held on its own connection."""
    if is_sqlite(url):
        database = make_url(url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            yield
            return
        with open(f"{database}.migrate-lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the catalog at `url` up to `revision` (creating it if it is empty); safe to
    call from several processes at once (see `migration_lock`)."""
    if is_sqlite(url):
        _ensure_sqlite_folder(url)
    with migration_lock(url):
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Take the catalog at `url` down to `revision` ("base" removes every table)."""
    command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The Alembic revision the catalog at `url` is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


@contextmanager
def catalog_sessions(settings: Any) -> Iterator[sessionmaker[Session]]:
    """A session factory on the migrated catalog at `settings.db_url`, disposed of on exit."""
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@contextmanager
def catalog_session(settings: Any) -> Iterator[Session]:
    with catalog_sessions(settings) as sessions, sessions() as session:
        yield session
