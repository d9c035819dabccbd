"""A token bucket per client: `burst` requests at once, refilled at `per_minute`."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from saefeat.api.errors import ProblemError

# Buckets remembered at most; the least recently seen client is forgotten first (it
# starts again with a full bucket), so a flood of addresses cannot grow memory.
MAX_CLIENTS = 10_000


class RateLimiter:
    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = burst
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str) -> float | None:
        """Spend one token of `client`'s bucket: None if allowed, else the seconds until
        the next token (for Retry-After)."""
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def check_rate(limiter: RateLimiter, caller: str, what: str) -> None:
    """429 with Retry-After once `caller`'s bucket is empty; `what` names the requests."""
    wait = limiter.take(caller)
    if wait is not None:
        raise ProblemError(
            429,
            f"too many {what} from this client; wait and try again",
            slug="rate-limited",
            headers={"Retry-After": retry_after(wait)},
        )
