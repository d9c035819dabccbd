"""Request bodies bounded before they are read: a pure ASGI middleware.

A body whose Content-Length is over its route's limit is refused (413) before one byte
of it is read; a body without one (chunked) is counted as it streams in and refused as
soon as it passes the limit. Nothing is parsed, and no key is looked up, before that:
an anonymous 200 MB label costs the server its first few kilobytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from saefeat.api.errors import problem_response
from saefeat.api.schemas import FieldError

Scope = dict[str, Any]
Message = dict[str, Any]


@dataclass(frozen=True)
class BodyLimits:
    """Largest body in bytes: label and vote writes, live text, every other route."""

    label: int
    live: int
    default: int
    prefix: str = "/v1"

    def for_path(self, path: str) -> int:
        rest = path[len(self.prefix) :] if path.startswith(self.prefix) else None
        if rest is not None and _LABEL_WRITES.match(rest):
            return self.label
        if rest is not None and _LIVE.match(rest):
            return self.live
        return self.default


_LABEL_WRITES = re.compile(r"^/(saes/[^/]+/features/[^/]+/labels|labels/[^/]+/votes)/?$")
_LIVE = re.compile(r"^/saes/[^/]+/(activations|steer)/?$")  # a text for the model


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed one before we see it
    return None


class BodyLimit:
    def __init__(self, app: Any, limits: BodyLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(scope, receive, send, limit, f"is {declared} bytes")
            return
        # Bodies here are small (kilobytes), so the whole body is read and counted
        # first, then handed to the app in one message.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(scope, receive, send, limit, "passed the limit while streaming")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later: only the disconnect

    return replay


async def _too_large(scope: Scope, receive: Any, send: Any, limit: int, what: str) -> None:
    detail = f"the request body {what}; this route takes at most {limit} bytes"
    response = problem_response(
        413,
        detail,
        slug="body-too-large",
        errors=[FieldError(field="body", location="body", message=detail)],
        # The rest of the body is never read, so the connection cannot carry another request.
        headers={"Connection": "close"},
    )
    await response(scope, receive, send)
