"""Liveness and readiness in one: the process answers and the catalog is reachable."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError

from saefeat import __version__
from saefeat.api.errors import ProblemError, problem_responses
from saefeat.api.params import SessionDep
from saefeat.api.schemas import Health

router = APIRouter(tags=["service"])


@router.get(
    "/health",
    responses=problem_responses(503),
    summary="Is the service up and its catalog reachable?",
)
def health(session: SessionDep) -> Health:
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
