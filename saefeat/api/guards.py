"""What bounds every request, installed on the app from its settings: body sizes, NUL-free
parameters, the live search pool, the live and label-write rate limits, and the secret
that signs cursors."""

from __future__ import annotations

from fastapi import FastAPI

from saefeat.api.body_limit import BodyLimit, BodyLimits
from saefeat.api.nul_guard import NoNulParameters
from saefeat.api.rate_limit import RateLimiter
from saefeat.config import Settings
from saefeat.features.live import LivePool
from saefeat.storage.catalog.cursor import load_secret, use_secret


def install_request_guards(app: FastAPI, settings: Settings, prefix: str) -> None:
    limits = BodyLimits(
        label=settings.label_body_bytes,
        live=settings.live_body_bytes,
        default=settings.body_bytes,
        prefix=prefix,
    )
    app.add_middleware(NoNulParameters)
    app.add_middleware(BodyLimit, limits=limits)  # added last: runs first
    app.state.live_pool = LivePool(settings.live_workers, settings.live_queue)
    app.state.live_rate_limiter = RateLimiter(settings.live_rate_per_minute, settings.live_burst)
    app.state.label_rate_limiter = RateLimiter(settings.label_rate_per_minute, settings.label_burst)
    use_secret(load_secret(settings.home, settings.cursor_secret))
