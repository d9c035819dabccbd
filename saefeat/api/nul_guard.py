"""No parameter may hold a NUL character: a pure ASGI middleware.

PostgreSQL text cannot hold NUL, so a `%00` in an id or a search string reached the
driver as an error (500) there and a plain miss on SQLite. No field of this API takes
one, so the request is refused (422, naming the parameter) before any route runs, the
same on both databases. Bodies are checked field by field (label text)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from saefeat.api.errors import problem_response
from saefeat.api.schemas import FieldError


def _nul_parameter(scope: dict[str, Any]) -> FieldError | None:
    message = "must not contain a NUL character (%00)"
    if "\x00" in scope.get("path", ""):
        return FieldError(field="path", location="path", message=message)
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" in query or "\x00" in query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return FieldError(
                    field=name.replace("\x00", "\\0"), location="query", message=message
                )
    return None


class NoNulParameters:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        error = _nul_parameter(scope) if scope["type"] == "http" else None
        if error is None:
            await self.app(scope, receive, send)
            return
        place = {"path": "the path", "query": f"query parameter {error.field}"}[
            error.location or ""
        ]
        response = problem_response(
            422, f"{place}: {error.message}", slug="validation-error", errors=[error]
        )
        await response(scope, receive, send)
