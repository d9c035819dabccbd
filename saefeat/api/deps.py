"""Per-request dependencies: the settings and a database session."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from saefeat.config import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    # One session per request; routes that write commit it themselves.
    with request.app.state.sessionmaker() as session:
        yield session
