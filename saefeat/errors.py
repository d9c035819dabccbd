"""Errors a user can act on. Each names the field at fault and what is allowed."""

from __future__ import annotations


class SaefeatError(Exception):
    """Base for every error saefeat raises on purpose (CLI exit 2, API 4xx)."""

    status_code = 422

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class SpecError(SaefeatError, ValueError):
    """A spec field has a value that is not allowed.

    A ValueError too, so pydantic validators turn it into a validation error (API 422).
    """


class NotFoundError(SaefeatError):
    status_code = 404


class CorruptDataError(SaefeatError):
    """Stored data failed its checksum or is unreadable."""

    status_code = 500


class IdempotencyConflict(SaefeatError):
    """The Idempotency-Key was used before with another body."""
