"""`saefeat --server URL ...`: submit jobs to a remote server and follow them live."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from saefeat.cli.common import console, user_errors
from saefeat.errors import SaefeatError, SpecError
from saefeat.storage.catalog.job_status import JobStatus

# Set by the app's --server / --key (saefeat/cli/__init__.py); the work commands
# (harvest, train, index, explain) send their spec there when a URL is set.
SERVER: dict[str, str | None] = {"url": None, "key": None}
SpecArg = Annotated[str, typer.Argument(help="JSON file, - for stdin, or JSON")]


def register(app: typer.Typer) -> None:
    from saefeat.workers.job_kinds import job_kinds

    submit_app = typer.Typer(no_args_is_help=True, help="Submit a job to a remote server.")
    for name, kind in job_kinds().items():  # one command per job kind, its spec as JSON
        help_text = f"{kind.route.summary}. SPEC: a {kind.spec_type.__name__} as JSON."
        submit_app.command(name, help=help_text)(user_errors(_submit_command(name)))
    app.add_typer(submit_app, name="submit")


def remote():
    from saefeat.remote import Remote

    if not SERVER["url"]:
        raise SaefeatError("this needs a server: pass --server URL (or set SAEFEAT_SERVER)",
                           field="server")  # fmt: skip
    return Remote(SERVER["url"], SERVER["key"])


def _submit_command(kind: str):
    def command(spec: SpecArg, watch: bool = False) -> None:
        submit(kind, spec, watch)

    command.__name__ = f"submit_{kind}"
    return command


def submit(kind: str, text: str, watch: bool) -> None:
    from saefeat.remote import watch as watch_jobs

    server = remote()
    if text == "-":
        text = sys.stdin.read()
    elif not text.lstrip().startswith("{"):
        try:
            text = Path(text).read_text()
        except OSError as e:
            raise SpecError(f"cannot read {text}: {e.strerror}", field="spec") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"not JSON: {e}", field="spec") from None
    accepted = server.submit(kind, body)
    print(accepted["job_id"])
    if watch:
        _report(watch_jobs(server, [accepted["job_id"]], console))


def _report(jobs: list[dict]) -> None:
    failed = [j for j in jobs if j["status"] != JobStatus.SUCCEEDED]
    for j in failed:
        console.print(f"[red]{j['kind']} {j['id']} {j['status']}[/red]: {j.get('error') or ''}",
                      highlight=False, soft_wrap=True)  # fmt: skip
    if failed:
        raise typer.Exit(1)


def remote_jobs(limit: int, watch: bool) -> None:
    from saefeat.cli.common import print_jobs
    from saefeat.remote import watch as watch_jobs

    server = remote()
    if watch:
        watch_jobs(server, None, console)
        return
    print_jobs(server.jobs(limit))
