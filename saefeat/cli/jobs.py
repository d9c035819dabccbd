"""`saefeat jobs`: the job table, newest first (this catalog's, or --server's)."""

from __future__ import annotations

from typing import Annotated

import typer

from saefeat.cli.common import user_errors
from saefeat.cli.remote import SERVER, remote_jobs
from saefeat.config import get_settings


def register(app: typer.Typer) -> None:
    app.command()(user_errors(jobs))


def jobs(
    limit: Annotated[int, typer.Option(help="newest N jobs")] = 20,
    watch: Annotated[bool, typer.Option(help="follow the active jobs live until they end")] = False,
):
    """List jobs, newest first: status, progress, rate, error (of --server, if given).

    The CLI's own runs are jobs too; --watch follows the active ones until they end."""
    from saefeat.cli.common import print_jobs

    if SERVER["url"]:
        remote_jobs(limit, watch)
        return

    from saefeat.storage.catalog.db import catalog_sessions
    from saefeat.storage.catalog.job_store import list_jobs

    settings = get_settings()
    if watch:
        with catalog_sessions(settings) as sessions:
            watch_local(sessions)
        return
    with catalog_sessions(settings) as sessions, sessions() as s:
        rows = [_job_dict(j) for j in list_jobs(s, limit)[0]]
    print_jobs(rows)


def _job_dict(j, unit: str = "") -> dict:
    """A job row as the API shows it (JobOut's fields that the CLI prints)."""
    eta = None
    if j.rate and j.progress_total is not None and j.status in ("queued", "running"):
        eta = max(0.0, (j.progress_total - j.progress_done) / j.rate)
    return {"id": j.id, "kind": j.kind, "status": j.status, "unit": unit,
            "progress_done": j.progress_done, "progress_total": j.progress_total,
            "rate": j.rate, "eta_seconds": eta, "created_at": j.created_at,
            "updated_at": j.updated_at, "error": j.error}  # fmt: skip


def watch_local(sessions) -> list[dict]:
    """Follow this catalog's active jobs (run by this machine's CLI or server) to their
    end, as `--server`'s are followed."""
    from saefeat.cli.common import console
    from saefeat.remote import watch
    from saefeat.storage.catalog.job_status import ACTIVE
    from saefeat.storage.catalog.job_store import get_job, list_jobs
    from saefeat.workers.job_kinds import job_kind

    def read(job_id: str) -> dict:
        with sessions() as s:
            j = get_job(s, job_id)
            return _job_dict(j, job_kind(j.kind).unit)

    def active() -> list[str]:
        with sessions() as s:
            return [j.id for j in list_jobs(s, 200)[0] if j.status in ACTIVE]

    return watch(read, None, console, active=active)
