"""The `saefeat` command line: one module per area, each adding its commands to `app`."""

from __future__ import annotations

import typer

from saefeat.cli import admin, features, harvest, index, interop, jobs, serve, steer, train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="harvest, train, index, serve, demo, features, steer, export/import, jobs, db, keys.",
)
for area in (harvest, train, index, serve, interop, admin, features, steer, jobs):
    area.register(app)

__all__ = ["app"]
