"""Job kinds: the registry that owns everything about each kind of job.

A kind is one object: its name (the job row's `kind`), the spec type it takes, how a
spec names its work (jobs with the same hash are one piece of work: a second submit
joins the active job), `run`, the admission check a spec sent over HTTP must pass, how
the API takes it (route path, scope, docs), the unit its progress counts, the Ray
options of its task, and its role as a pipeline stage. From the registry come the
submit routes (saefeat/api/job_routes.py), the remote client's paths and `saefeat
submit`'s choices (saefeat/remote.py), and the pipeline's stages (pipeline_job.py). The
runner (workers/jobs.py) does the rest for every kind: the row, idempotency, claims and
leases, cancel, progress, resumes, attempts.

    run(spec, *, settings, progress, should_stop) -> JobOutcome

`progress(done, total)` may be called as often as the kind likes (the runner throttles
the writes); `should_stop()` says the job was cancelled or its runner is shutting down:
`run` then stops soon and raises JobStopped (after making sure nothing it started can
still write). JobBusy hands the job back to `queued` to be tried again later. The two
callbacks' types are job_progress.py's (Progress, ShouldStop).

A new kind is a module that calls `register_job_kind`, plus its line in
BUILTIN_KIND_MODULES; tests/workers/test_job_kinds.py finds its route, CLI choice and
remote path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from saefeat.admission import Admission
from saefeat.config import Settings
from saefeat.errors import SaefeatError
from saefeat.specs.base import Spec
from saefeat.storage.catalog.job_status import JobStatus

BUILTIN_KIND_MODULES = (
    "saefeat.workers.harvest_job",
    "saefeat.workers.train_job",
    "saefeat.workers.index_job",
    "saefeat.workers.pipeline_job",
    "saefeat.workers.contrast_job",
    "saefeat.workers.explain_job",
)
Made = dict[str, Any]  # what a pipeline's stages so far make: activation_set, hooks, sae


@dataclass(frozen=True)
class JobOutcome:
    status: JobStatus  # SUCCEEDED or FAILED
    note: str | None = None  # the row's error text: why it failed, or a note
    result: Any = None  # what run made, for a caller that ran the job itself (the CLI)


@dataclass(frozen=True)
class Route:
    """How the API takes a kind: POST /v1{path}, 202 and the job."""

    path: str  # e.g. "/harvests"; a `{name}` in it is the spec field path_fields names
    summary: str
    description: str = ""
    scope: str = "jobs"  # the API key scope that may submit it
    body_type: type[BaseModel] | None = None  # the body when some fields are in the path
    path_fields: dict[str, str] = field(default_factory=dict)  # path param -> spec field
    # A kind whose result is read at a route of its own (a contrast) answers with (key,
    # the name of that GET route, whose path parameter `key` is the job's spec hash).
    result: tuple[str, str] | None = None


@dataclass(frozen=True)
class Stage:
    """A kind's role in a pipeline (saefeat/specs/pipeline.py builds its spec)."""

    build: Callable[[Any, Made], BaseModel]  # (pipeline spec, made so far) -> its spec
    makes: Callable[[Any], Made]  # what it makes, for the later stages
    done: Callable[[Settings, Any], bool]  # its result exists already: skip it


def _no_check(spec: Any, ctx: Admission) -> None:
    return None


def _content_id(spec: Spec) -> str:
    return spec.content_id()


@dataclass(frozen=True)
class JobKind:
    name: str  # the job row's `kind`
    spec_type: type[Spec]
    run: Callable[..., JobOutcome]  # run(spec, *, settings, progress, should_stop)
    route: Route
    unit: str  # what progress counts: tokens, steps, ...
    admit: Callable[[Any, Admission], None] = _no_check  # SpecError names the field
    spec_hash: Callable[[Any], str] = _content_id  # the work a spec names
    ray_options: Callable[[Any, int], dict[str, Any]] | None = None  # (spec, cluster GPUs)
    stage: Stage | None = None


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


def job_kinds() -> dict[str, JobKind]:
    """Every kind by name (the built-in modules are imported on first use)."""
    for module in BUILTIN_KIND_MODULES:
        importlib.import_module(module)
    return _KINDS


def job_kind(name: str) -> JobKind:
    if name in _KINDS:  # registered already: the other kinds' modules need not load
        return _KINDS[name]
    try:
        return job_kinds()[name]
    except KeyError:
        raise SaefeatError(f"no job kind {name!r}; known: {sorted(job_kinds())}") from None


def kind_for_spec(spec: BaseModel) -> JobKind:
    for load in (False, True):  # the registered ones first; then every built-in kind
        for kind in (job_kinds() if load else _KINDS).values():
            if type(spec) is kind.spec_type:
                return kind
    raise SaefeatError(f"no job kind takes a {type(spec).__name__}")


def job_kind_names() -> list[str]:
    return sorted(job_kinds())


def stage_kinds() -> dict[str, JobKind]:
    """The kinds a pipeline can chain, by stage name (the kind's name)."""
    return {name: kind for name, kind in job_kinds().items() if kind.stage is not None}
