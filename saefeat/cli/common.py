"""What every command shares: the console, the one-line error, the progress bar."""

from __future__ import annotations

import functools

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from saefeat.errors import SaefeatError

console = Console(stderr=True)

DEFAULT_PORT = 8000


def user_errors(fn):
    """A user's mistake is one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SaefeatError as e:
            console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "spec"
            msg = first["msg"].removeprefix("Value error, ")
            console.print(f"[red]error:[/red] {field}: {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def progress_bar(kind: str) -> Progress:
    """A bar for a job of this kind, counting in the kind's unit (workers/job_kinds.py)."""
    from saefeat.workers.job_kinds import job_kind

    return Progress(
        TextColumn(f"[bold]{kind}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(job_kind(kind).unit),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
