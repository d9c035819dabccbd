"""Per-request dependencies: the settings and a database session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from saefeat.config import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    # One session per request; routes that write commit it themselves.
    with request.app.state.sessionmaker() as session:
        yield session


async def read_session(request: Request) -> AsyncIterator[Session]:
    """The session of the catalog's read routes, which are `async def` and query inline.

    Their reads are a few indexed lookups (about a millisecond) and CPU-bound under the
    GIL, so a sync route's thread-pool hop cost more than it saved: under 16 clients it
    halved the feature page's throughput (bench/catalog.py). Slow work (the model forward
    of live search, jobs, writes) stays in sync routes on the thread pool. The session is
    in autocommit mode: reads need no transaction."""
    with request.app.state.read_sessionmaker() as session:
        yield session
