"""What every command shares: the console, the one-line error, the progress bars."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from rich.console import Console

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


def print_jobs(jobs: list[dict]) -> None:
    """The job list on stdout: a table at the terminal's width whose cells wrap (none is
    cut short); tab-separated lines, one a job, when stdout is not a terminal."""
    from rich.table import Table

    from saefeat.cli.progress import clock

    header = ("id", "kind", "status", "progress", "rate/s", "eta", "created", "error / note")
    rows = []
    for j in jobs:
        done, total, unit = j["progress_done"], j["progress_total"], j.get("unit") or ""
        pct = f" ({done / total:.0%})" if total else ""
        stages = " | ".join(f"{s['stage']}: {s['status']}" for s in j.get("stages") or [])
        created = j["created_at"]
        created = created if isinstance(created, str) else created.isoformat()
        rows.append((
            j["id"], j["kind"], j["status"] + (f" ({stages})" if stages else ""),
            f"{done:,}/{total or 0:,}{' ' + unit if unit else ''}{pct}",
            f"{j['rate']:,.1f}" if j.get("rate") else "-",
            clock(j["eta_seconds"]) if j.get("eta_seconds") is not None
            and j["status"] in ("queued", "running") else "-",
            created[:19].replace("T", " "), " ".join((j.get("error") or "").split()),
        ))  # fmt: skip
    out = Console()
    if not out.is_terminal:
        for row in (header, *rows):
            print("\t".join(row))
        return
    table = Table(*header)
    for column in table.columns:
        column.overflow = "fold"
    for row in rows:
        table.add_row(*row)
    out.print(table)


def progress_bar(kind: str, unit: str | None = None) -> StepBars:
    """Bars for a step of this kind, counting in the kind's unit (workers/job_kinds.py)
    or in `unit` (a step that is no job kind, e.g. an export: then nothing heavy is
    imported), with rich.Progress's add_task/update; drawn by saefeat/cli/progress.py
    (rate, ETA, real elapsed time; plain lines when stderr is not a terminal)."""
    if unit is None:
        from saefeat.workers.job_kinds import job_kind

        unit = job_kind(kind).unit
    return StepBars(kind, unit)


@contextmanager
def model_loads() -> Iterator[None]:
    """transformers' "Loading weights" bars in the CLI's view while a command loads a
    model in this process (features fire, steer)."""
    from saefeat.cli.progress import ProgressView

    with ProgressView(console) as view:
        view.follow_transformers()
        yield


class StepBars:
    """`with progress_bar(kind) as bar: t = bar.add_task(...); bar.update(t, completed=d,
    total=t)`, shown by a ProgressView."""

    def __init__(self, kind: str, unit: str):
        from saefeat.cli.progress import ProgressView

        self.kind, self.unit = kind, unit
        self.view = ProgressView(console)

    def __enter__(self) -> StepBars:
        self.view.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for key in self.view.steps:
            self.view.finish(key, "failed" if exc[0] else "done")
        self.view.__exit__(*exc)

    def add_task(self, description: str, total: int | None = None, **fields) -> str:
        key = f"{description}-{len(self.view.steps)}"
        self.view.add(key, description, self.unit, total=total)
        if fields.get("info"):
            self.view.update(key, note=str(fields["info"]))
        return key

    def update(self, key: str, *, completed: int | None = None, total: int | None = None,
               info: str | None = None, **_) -> None:  # fmt: skip
        self.view.update(key, done=completed, total=total, note=info)
