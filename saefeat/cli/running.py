"""Where a work command (harvest, train, index, explain) runs: here, as a job row, or on
the server that `--server` / SAEFEAT_SERVER names.

Here: the spec becomes a row in the catalog's jobs table exactly as one sent over HTTP
(`saefeat jobs`, the /jobs page and GET /v1/jobs show it, its status, progress and
rate), and this process runs it (workers/jobs.py's runner, in this thread) inside
`runtime.work_here()`: work that needs one process runs in this one, and Ray starts
only for work that needs several. A ProgressView shows it, with the model's load.

On a server: the spec is POSTed to the kind's route and the job followed until it
ends, as `saefeat submit KIND --watch` does; nothing heavy runs here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from saefeat.cli.common import console
from saefeat.cli.progress import ProgressView
from saefeat.config import Settings, get_settings
from saefeat.errors import SaefeatError

Note = Callable[[str], None]  # text beside the bar: a loss, a phase


def on_server() -> bool:
    from saefeat.cli.remote import SERVER

    return bool(SERVER["url"])


def run_here(spec: BaseModel, work: Callable[..., Any] | None = None, *,
             settings: Settings | None = None) -> tuple[Any, Any]:  # fmt: skip
    """Run the spec as a job of its kind in this process; (what it made, the job row
    as it ended). `work(spec, *, settings, progress, should_stop, note)` runs instead
    of the kind's own `run` (one that would use Ray where this process can do it).
    A job already active for the same work is run here if nobody holds it (queued, or
    its runner died), else refused naming it."""
    from saefeat.storage.catalog.db import catalog_sessions
    from saefeat.workers.job_kinds import kind_for_spec
    from saefeat.workers.jobs import JobRunner
    from saefeat.workers.runtime import work_here

    settings = settings or get_settings()
    _register(spec)
    kind = kind_for_spec(spec)
    with catalog_sessions(settings) as sessions:
        runner = JobRunner(settings, sessions)
        job, created = runner.submit(spec)
        if not created and not _free(job):
            raise SaefeatError(
                f"job {job.id} ({job.status}) is already running this {kind.name} "
                f"({job.spec_hash}); follow it with `saefeat jobs --watch`"
            )
        with ProgressView(console) as view, work_here():
            key = view.add(job.id, f"{kind.name} {job.id[:8]}", kind.unit, status="starting")
            view.follow_transformers()  # the work imports transformers anyway

            phases = ["running"]  # what the work says it is doing (an index's phases)

            def progress(done: int, total: int | None, phase: Any = None) -> None:
                if isinstance(phase, str):
                    phases.append(phase)
                view.update(key, done=done, total=total, status=phases[-1])

            def note(text: str) -> None:
                view.update(key, note=text)

            run = None if work is None else _with_note(work, note)
            try:
                result = runner.run(job.id, progress=progress, work=run)
            finally:
                view.finish(key, runner.get(job.id).status)
        job = runner.get(job.id)
        runner.shutdown(timeout=1)
    if result is None:
        raise SaefeatError(f"{kind.name} job {job.id} {job.status}: {job.error or ''}".strip())
    return result, job


# The module of each spec's kind: imported alone, so a harvest does not import what
# contrasts and explanations need (sklearn, the scorers); the rest load if one is missing.
KIND_MODULES = {"HarvestSpec": "harvest_job", "TrainJobSpec": "train_job",
                "IndexSpec": "index_job", "ExplainSpec": "explain_job",
                "ContrastSpec": "contrast_job", "PipelineSpec": "pipeline_job"}  # fmt: skip


def _register(spec: BaseModel) -> None:
    import importlib

    module = KIND_MODULES.get(type(spec).__name__)
    if module is not None:
        importlib.import_module(f"saefeat.workers.{module}")


def _free(job) -> bool:
    """Nobody runs it: queued, or running under a lease that has run out."""
    from saefeat.storage.catalog.models import utcnow

    if job.status == "queued":
        return True
    expires = job.lease_expires_at
    if job.status != "running" or expires is None:
        return False
    now = utcnow()
    return (expires if expires.tzinfo else expires.replace(tzinfo=now.tzinfo)) < now


def _with_note(work: Callable[..., Any], note: Note) -> Callable[..., Any]:
    def run(spec, **kw):
        return work(spec, note=note, **kw)

    return run


# ---- on a server ---------------------------------------------------------------------


def run_on_server(kind: str, spec: BaseModel) -> dict:
    """POST the spec (the fields the user set; the server's defaults for the rest), print
    the job id, follow the job to its end; the job as it ended, exit 1 unless it
    succeeded."""
    import typer

    from saefeat.cli.remote import remote
    from saefeat.remote import watch

    server = remote()
    body = spec.model_dump(mode="json", exclude_unset=True)
    accepted = server.submit(kind, body)
    console.print(f"submitted {kind} job {accepted['job_id']} to {server.http.base_url}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    (job,) = watch(server, [accepted["job_id"]], console)
    if job["status"] != "succeeded":
        why = job.get("error") or ""
        console.print(f"[red]{kind} job {job['id']} {job['status']}[/red]: {why}",
                      highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)
    if job.get("error"):  # a note: reused, resumed, a summary
        console.print(job["error"], highlight=False, soft_wrap=True)
    return job
