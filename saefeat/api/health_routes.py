"""Liveness and readiness in one: the process answers and the catalog is reachable."""

from __future__ import annotations

from typing import Annotated

from alembic.runtime.migration import MigrationContext
from fastapi import APIRouter, Depends
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from saefeat import __version__
from saefeat.api.deps import get_session
from saefeat.api.errors import ProblemError, problem_responses
from saefeat.api.schemas import Health

router = APIRouter(tags=["service"])


@router.get(
    "/health",
    response_model=Health,
    responses=problem_responses(503),
    summary="Is the service up and its catalog reachable?",
)
def health(session: Annotated[Session, Depends(get_session)]) -> Health:
    try:
        context = MigrationContext.configure(session.connection())
        revision = context.get_current_revision()
    except SQLAlchemyError as exc:
        raise ProblemError(
            503,
            f"the catalog database cannot be reached ({type(exc).__name__}); check "
            "SAEFEAT_DATABASE_URL and that the database is running",
            slug="database-unavailable",
        ) from exc
    return Health(version=__version__, schema_revision=revision)
