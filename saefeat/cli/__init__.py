"""The `saefeat` command line: one module per area, each adding its commands to `app`."""

from __future__ import annotations

import typer

from saefeat.cli import (
    admin,
    contrast,
    explain,
    features,
    harvest,
    index,
    interop,
    jobs,
    remote,
    serve,
    steer,
    train,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="harvest, train, index, explain, serve, demo, features, steer, contrast, "
    "export/import, submit, jobs, db, keys.",
)
for area in (remote, harvest, train, index, explain, serve, interop, admin, features, steer,
             contrast, jobs):  # fmt: skip
    area.register(app)

__all__ = ["app"]
