"""The callbacks a job's run gets, and its progress as throttled row updates with a rate
(units per second)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypedDict

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5  # at most this often a progress write to the catalog
# (done, total) in the kind's unit; a kind may add what it is doing now (a phase, text).
Progress = Callable[..., None]
ShouldStop = Callable[[], bool]  # the job was cancelled or its runner is shutting down


class RunCallbacks(TypedDict, total=False):
    """The callbacks a function passes on unchanged to the work it wraps (`**run`)."""

    progress: Progress | None
    should_stop: ShouldStop | None


class ProgressMeter:
    def __init__(self, write: Callable[..., None], also: Progress | None):
        self.write, self.also = write, also
        self.t0: float | None = None
        self.done0 = 0
        self.last_write = 0.0
        self.pending: dict | None = None

    def __call__(self, done: int, total: int, phase: str | None = None) -> None:
        """`phase`: what the work is doing now, passed on to `also` (the CLI shows it)."""
        now = time.monotonic()
        if self.t0 is None:
            self.t0, self.done0 = now, done
        rate = (done - self.done0) / (now - self.t0) if now > self.t0 else None
        self.pending = {"progress_done": done, "progress_total": total, "rate": rate}
        if self.also:
            self.also(done, total, *(() if phase is None else (phase,)))
        if now - self.last_write >= PROGRESS_EVERY_S or done >= total:
            self.flush()
            self.last_write = now

    def flush(self) -> None:
        """Write the latest progress; while the catalog is unreachable it is kept for the
        next write (a progress bar must not fail the work it reports on)."""
        if self.pending:
            try:
                self.write(**self.pending)
            except Exception as e:
                from saefeat.storage.catalog.db import database_unreachable  # rare: lazily

                if not database_unreachable(e):
                    raise
                log.warning("progress not written, the catalog is unreachable: %s", e)
                return
            self.pending = None
