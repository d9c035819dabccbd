"""The FastAPI application.

Serve with `uvicorn --factory saefeat.api.app:create_app`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from saefeat import __version__, sigterm
from saefeat.api import (
    catalog_routes,
    contrast_routes,
    health_routes,
    job_routes,
    label_routes,
    live_routes,
    page_routes,
    search_routes,
    steer_routes,
)
from saefeat.api.auth import AUTH_RESPONSES, require_scope
from saefeat.api.errors import install_error_handlers, install_problem_openapi
from saefeat.api.guards import install_request_guards
from saefeat.config import Settings, get_settings
from saefeat.storage.catalog.db import make_engine, make_sessionmaker, upgrade
from saefeat.storage.catalog.keys import ensure_api_key
from saefeat.storage.catalog.models import API_SCOPES

API_PREFIX = "/v1"
STATIC_DIR = Path(__file__).parent / "static"  # the pages' scripts
DESCRIPTION = """\
Browse sparse-autoencoder features: SAEs, their features' statistics, top-activating
examples and vocabulary projections, nearest features; search features by token, by
label text (full-text), or by running a text through the model; label and vote on labels.
The same app serves the feature browser pages at `/`.

Errors are `application/problem+json` (RFC 9457). Lists are cursor-paginated: pass a
page's `next_cursor` back as `cursor`. Writes need `Authorization: Bearer <key>`.
"""


def _prepare_database(settings: Settings) -> None:
    # Migrate on start so a fresh SQLite home works with no setup step.
    upgrade(settings.db_url)


def _bootstrap_key(app: FastAPI, settings: Settings) -> None:
    if not settings.bootstrap_api_key:
        return
    with app.state.sessionmaker() as session:
        ensure_api_key(session, "bootstrap", settings.bootstrap_api_key, API_SCOPES)
        session.commit()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (default: from the environment); migrates the catalog."""
    settings = settings or get_settings()
    _prepare_database(settings)
    engine = make_engine(settings.db_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Ray is not started here: the job runner starts it when the first job runs
        # (workers/runtime.py), so a server that only serves the catalog runs none;
        # this loop then puts the server's SIGTERM handler back over Ray's.
        sigterm.keep_on(asyncio.get_running_loop())
        yield
        engine.dispose()

    app = FastAPI(
        title="saefeat",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    # Read routes run without a transaction: on PostgreSQL that saves the BEGIN and
    # ROLLBACK round trips around every page's three queries.
    app.state.read_sessionmaker = make_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT")
    )
    install_error_handlers(app)
    install_problem_openapi(app)
    install_request_guards(app, settings, API_PREFIX)

    # Reads are open unless the deployment asks for keys; OpenAPI then says so too.
    read_guard = [Depends(require_scope("read"))] if settings.require_read_key else []
    read_responses = AUTH_RESPONSES if settings.require_read_key else {}
    app.include_router(health_routes.router, prefix=API_PREFIX)
    for reads in (catalog_routes, search_routes, live_routes, steer_routes):
        app.include_router(
            reads.router, prefix=API_PREFIX, dependencies=read_guard, responses=read_responses
        )
    # Pages are reads too; a browser cannot send the key, so keyed reads close them.
    app.include_router(page_routes.router, dependencies=read_guard)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(page_routes.asset_router)  # /favicon.ico: open, like /static
    app.include_router(label_routes.router, prefix=API_PREFIX)
    app.include_router(
        job_routes.router, prefix=API_PREFIX, dependencies=read_guard, responses=read_responses
    )
    contrast_routes.install(app, API_PREFIX, read_guard, read_responses)
    _bootstrap_key(app, settings)
    return app
