"""`saefeat jobs`: the job table, newest first (this catalog's, or --server's)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from saefeat.cli.common import user_errors
from saefeat.cli.remote import SERVER, remote_jobs
from saefeat.config import get_settings
from saefeat.errors import SaefeatError


def register(app: typer.Typer) -> None:
    app.command()(user_errors(jobs))


def jobs(
    limit: Annotated[int, typer.Option(help="newest N jobs")] = 20,
    watch: Annotated[bool, typer.Option(help="follow the active jobs live (--server)")] = False,
):
    """List jobs, newest first: status, progress, rate, error (of --server, if given)."""
    from rich.table import Table

    if SERVER["url"]:
        remote_jobs(limit, watch)
        return
    if watch:
        raise SaefeatError("--watch follows a server's jobs: pass --server URL", field="watch")

    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.job_store import list_jobs

    table = Table("id", "kind", "status", "progress", "tok/s", "created", "error")
    with catalog_session(get_settings()) as s:
        for j in list_jobs(s, limit)[0]:
            pct = f"{j.progress_done / j.progress_total:.0%}" if j.progress_total else "-"
            table.add_row(
                j.id,
                j.kind,
                j.status,
                f"{j.progress_done:,}/{j.progress_total or 0:,} ({pct})",
                f"{j.rate:,.0f}" if j.rate else "-",
                f"{j.created_at:%Y-%m-%d %H:%M}",
                (j.error or "")[:60],
            )
    Console().print(table)
