"""Job kinds: the registry that tells the job runner how to run each kind of job.

A kind is one object: its name (the job row's `kind`), the spec type it takes, how a
spec names the work it does (jobs with the same hash are one piece of work: a second
submit joins the active job), and `run`. The runner (workers/jobs.py) does the rest for
every kind: the row, idempotency, claims and leases, cancel, progress, resumes, attempts.

    run(spec, *, settings, progress, should_stop) -> JobOutcome

`progress(done, total)` may be called as often as the kind likes (the runner throttles
the writes); `should_stop()` says the job was cancelled or its runner is shutting down:
`run` then stops soon and raises JobStopped (after making sure nothing it started can
still write). JobBusy hands the job back to `queued` to be tried again later.

Built-in kinds live in their own modules, listed in BUILTIN_KIND_MODULES; a new kind is
a module that calls `register_job_kind` plus a line there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from saefeat.errors import SaefeatError

BUILTIN_KIND_MODULES = (
    "saefeat.workers.harvest_job",
    "saefeat.workers.train_job",
    "saefeat.workers.index_job",
    "saefeat.workers.pipeline_job",
    "saefeat.workers.contrast_job",
    "saefeat.workers.explain_job",
)
Progress = Callable[[int, int], None]  # (done, total) in the kind's unit


@dataclass(frozen=True)
class JobOutcome:
    status: Literal["succeeded", "failed"]
    note: str | None = None  # the row's error text: why it failed, or a note
    result: Any = None  # what run made, for a caller that ran the job itself (the CLI)


@dataclass(frozen=True)
class JobKind:
    name: str  # the job row's `kind`
    spec_type: type[BaseModel]
    spec_hash: Callable[[Any], str]  # the work a spec names, e.g. HarvestSpec.set_id
    run: Callable[..., JobOutcome]  # run(spec, *, settings, progress, should_stop)


class JobStopped(SaefeatError):
    """A run stopped because should_stop() said so; the runner records why."""

    status_code = 409


class JobBusy(SaefeatError):
    """The work cannot start now (another process holds it); the job is tried later."""

    status_code = 409


_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> JobKind:
    known = _KINDS.get(kind.name)
    if known is not None and known != kind:
        raise ValueError(f"job kind {kind.name!r} is registered already")
    _KINDS[kind.name] = kind
    return kind


def _kinds() -> dict[str, JobKind]:
    for module in BUILTIN_KIND_MODULES:  # imported on first use: they import the workers
        importlib.import_module(module)
    return _KINDS


def job_kind(name: str) -> JobKind:
    try:
        return _kinds()[name]
    except KeyError:
        raise SaefeatError(f"no job kind {name!r}; known: {sorted(_kinds())}") from None


def kind_for_spec(spec: BaseModel) -> JobKind:
    for kind in _kinds().values():
        if type(spec) is kind.spec_type:
            return kind
    raise SaefeatError(f"no job kind takes a {type(spec).__name__}")


def job_kind_names() -> list[str]:
    return sorted(_kinds())
