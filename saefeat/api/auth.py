"""Bearer API keys with scopes: 401 without a valid key, 403 without the scope."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from saefeat.api.deps import get_session
from saefeat.api.errors import ProblemError, problem_responses
from saefeat.storage.catalog.keys import has_scope, verify_api_key
from saefeat.storage.catalog.models import ApiKey

REALM = 'Bearer realm="saefeat"'
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description='An API key: "Authorization: Bearer sfk_..."',
)
# What a route guarded by `require_scope` can answer besides its own statuses.
AUTH_RESPONSES = problem_responses(401, 403)


def checked_key(
    credentials: HTTPAuthorizationCredentials | None, session: Session, scope: str | None
) -> ApiKey:
    """The caller's key if it is live and has `scope` (None: any scope); else a 401 or
    403 problem."""
    if credentials is None:
        raise ProblemError(
            401,
            f'this route needs an API key with the "{scope}" scope; send it as '
            '"Authorization: Bearer <key>"',
            slug="unauthorized",
            headers={"WWW-Authenticate": REALM},
        )
    key = verify_api_key(session, credentials.credentials)
    if key is None:
        raise ProblemError(
            401,
            "the API key is unknown or revoked; check it, or ask an admin for a new one",
            slug="unauthorized",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    if scope is not None and not has_scope(key, scope):
        raise ProblemError(
            403,
            f'the API key "{key.prefix}..." ({key.name}) has scopes {key.scopes}; this '
            f'route needs "{scope}": ask an admin for a key with it',
            slug="forbidden",
            headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'},
        )
    return key


def require_scope(scope: str) -> Callable[..., ApiKey]:
    """A dependency that returns the caller's key, or refuses the request."""

    def check_key(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        session: Session = Depends(get_session),
    ) -> ApiKey:
        return checked_key(credentials, session, scope)

    check_key.__name__ = f"require_{scope}_scope"
    return check_key


def optional_key(
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    session: Session = Depends(get_session),
) -> ApiKey | None:
    """For open routes that show more to some keys: the caller's key, or None without
    one; a key that is sent but unknown or revoked is still a 401."""
    if credentials is None:
        return None
    key = verify_api_key(session, credentials.credentials)
    if key is None:
        raise ProblemError(
            401,
            "the API key is unknown or revoked; check it, ask an admin for a new one, or "
            "send no key",
            slug="unauthorized",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    return key
