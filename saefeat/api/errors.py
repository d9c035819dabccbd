"""Every error as application/problem+json (RFC 9457), and OpenAPI that says so."""

from __future__ import annotations

import http
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from saefeat.api.schemas import FieldError, Problem
from saefeat.errors import SaefeatError
from saefeat.storage.catalog.db import database_unreachable

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)

DESCRIPTIONS = {
    400: "The cursor was not made by this server for this query",
    401: "No API key, or the key is unknown or revoked",
    403: "The API key lacks the scope this route needs",
    404: "The SAE or feature does not exist",
    413: "The body (or the text) is larger than this route takes",
    422: "A parameter or body field is invalid; `errors` names it",
    429: "Too many requests from this client; Retry-After says when to try again",
    503: "The service cannot take this request now (see the detail)",
}


class ProblemError(Exception):
    """Raise from a route or dependency to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}


def problem_type(slug: str | None) -> str:
    return f"urn:saefeat:problem:{slug}" if slug else "about:blank"


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(
        type=problem_type(slug),
        title=http.HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these statuses, each with the Problem body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        responses[status] = {"model": Problem, "description": DESCRIPTIONS.get(status, "")}
        if status == 401:
            responses[status]["headers"] = {
                "WWW-Authenticate": {
                    "description": 'Bearer challenge, e.g. Bearer realm="saefeat"',
                    "schema": {"type": "string"},
                }
            }
    return responses


def _field_error(error: dict[str, Any]) -> FieldError:
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "not valid JSON")
        return FieldError(field="body", location="body", message=f"not valid JSON: {reason}")
    loc = [str(part) for part in error.get("loc", ())]
    location = loc[0] if loc and loc[0] in ("query", "path", "body", "header", "cookie") else None
    parts = loc[1:] if location else loc
    field = ".".join(parts) or (location or "request")
    return FieldError(field=field, location=location, message=error.get("msg", "invalid"))


def _describe(err: FieldError) -> str:
    where = {"body": "body field", "query": "query parameter", "path": "path parameter"}
    place = where.get(err.location or "", err.location or "field")
    return f"{err.field} ({place}): {err.message}"


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [_field_error(e) for e in exc.errors()]
    detail = "; ".join(_describe(e) for e in errors) or "the request is invalid"
    return problem_response(422, detail, slug="validation-error", errors=errors)


async def _on_saefeat(request: Request, exc: SaefeatError) -> JSONResponse:
    errors = None
    if exc.status_code in (400, 413, 422) and exc.field:
        errors = [FieldError(field=exc.field, location=None, message=exc.message)]
    slugs = {400: "bad-cursor", 404: "not-found", 413: "too-long", 422: "invalid-value"}
    slug = slugs.get(exc.status_code, "error")
    return problem_response(exc.status_code, str(exc), slug=slug, errors=errors)


async def _on_problem(request: Request, exc: ProblemError) -> JSONResponse:
    return problem_response(exc.status, exc.detail, slug=exc.slug, headers=exc.headers)


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # FastAPI could not decode the body (not UTF-8, say): an invalid body, like
        # malformed JSON, so the same 422 naming it.
        error = FieldError(
            field="body", location="body", message=f"not valid JSON: {exc.__cause__}"
        )
        return problem_response(422, _describe(error), slug="validation-error", errors=[error])
    detail = exc.detail if isinstance(exc.detail, str) else http.HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}; the API is described at /docs"
    return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))


# How long a client should wait before trying again while the catalog is unreachable.
DATABASE_RETRY_AFTER_S = 5


async def _on_database(request: Request, exc: Exception) -> JSONResponse:
    if not database_unreachable(exc):
        return await _on_unexpected(request, exc)
    log.warning("catalog database unreachable on %s %s: %s", request.method,
                request.url.path, type(exc).__name__)  # fmt: skip
    # Not acknowledged: what the request wrote is rolled back with its session (a commit
    # cut off midway is the database's to keep or drop, as with any lost connection).
    return problem_response(
        503, "the catalog database cannot be reached just now; the request was not "
        "acknowledged: try again after Retry-After seconds", slug="database-unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )  # fmt: skip


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        500, "the server failed on this request; the error is in its log", slug="internal-error"
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(SaefeatError, _on_saefeat)
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    from sqlalchemy.exc import DBAPIError

    app.add_exception_handler(DBAPIError, _on_database)
    app.add_exception_handler(Exception, _on_unexpected)


def _declare_guard_statuses(operation: dict[str, Any]) -> None:
    """Statuses that come from outside the route itself: 413 from the body limit on any
    operation with a body, 400 for a cursor this server did not sign."""
    extra = []
    if "requestBody" in operation:
        extra.append(413)
    if any(p.get("name") == "cursor" for p in operation.get("parameters", ())):
        extra.append(400)
    responses = operation.setdefault("responses", {})
    for status in extra:
        if str(status) not in responses:
            responses[str(status)] = {
                "description": DESCRIPTIONS[status],
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            }


def install_problem_openapi(app: FastAPI) -> None:
    """Generate OpenAPI as FastAPI does, then declare error bodies as problem+json."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                _declare_guard_statuses(operation)
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status[:1] in "45" and "application/json" in content:
                        content[PROBLEM_JSON] = content.pop("application/json")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
