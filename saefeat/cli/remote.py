"""`saefeat --server URL ...`: submit jobs to a remote server and follow them live."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from saefeat.cli.common import console, user_errors
from saefeat.errors import SaefeatError, SpecError
from saefeat.storage.catalog.job_status import JobStatus

SERVER: dict[str, str | None] = {"url": None, "key": None}  # set by --server / --key
SpecArg = Annotated[str, typer.Argument(help="JSON file, - for stdin, or JSON")]


def register(app: typer.Typer) -> None:
    app.callback()(server_options)
    from saefeat.workers.job_kinds import job_kinds

    submit_app = typer.Typer(no_args_is_help=True, help="Submit a job to a remote server.")
    for name, kind in job_kinds().items():  # one command per job kind, its spec as JSON
        help_text = f"{kind.route.summary}. SPEC: a {kind.spec_type.__name__} as JSON."
        submit_app.command(name, help=help_text)(user_errors(_submit_command(name)))
    app.add_typer(submit_app, name="submit")


def server_options(
    server: Annotated[
        str | None, typer.Option(envvar="SAEFEAT_SERVER", help="a remote saefeat server's URL")
    ] = None,
    key: Annotated[
        str | None, typer.Option(envvar="SAEFEAT_API_KEY", help="API key for --server")
    ] = None,
):
    """saefeat: sparse-autoencoder features, from harvest to pages."""
    SERVER.update(url=server, key=key)


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
    from rich.table import Table

    from saefeat.remote import watch as watch_jobs

    server = remote()
    if watch:
        watch_jobs(server, None, console)
        return
    table = Table("id", "kind", "status", "progress", "rate/s", "eta s", "created", "error")
    for j in server.jobs(limit):
        done, total = j["progress_done"], j["progress_total"]
        stages = " ".join(f"{s['stage']}:{s['status']}" for s in j.get("stages") or [])
        table.add_row(
            j["id"], j["kind"], j["status"] + (f" ({stages})" if stages else ""),
            f"{done:,}/{total or 0:,}", f"{j['rate']:,.1f}" if j["rate"] else "-",
            f"{j['eta_seconds']:.0f}" if j["eta_seconds"] is not None else "-",
            j["created_at"][:16], (j.get("error") or "")[:60],
        )  # fmt: skip
    Console().print(table)
