"""The `saefeat` command line: one module per area, each adding its commands to a Typer
app in its `register(app)`.

A command's module is imported only when that command runs (`LazyGroup`): the catalog
queries (`features`, `jobs`, `export --to neuronpedia`) then import neither torch nor
Ray and answer in well under a second, while `harvest` pays for its imports itself.
`saefeat --help` (and an unknown command) loads every area, to list them all.
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

# Each command's area module; an area may register a command not listed here: it is
# then found by loading every area.
AREAS = {
    "harvest": "harvest", "train": "train", "index": "index", "explain": "explain",
    "serve": "serve", "demo": "serve", "export": "interop", "import": "interop",
    "db": "admin", "keys": "admin", "features": "features", "steer": "steer",
    "contrast": "contrast", "jobs": "jobs", "submit": "remote",
}  # fmt: skip


class LazyGroup(TyperGroup):
    """A group that imports an area and builds its commands when one of them is asked for."""

    def _load(self, area: str) -> None:
        module = importlib.import_module(f"saefeat.cli.{area}")
        holder = typer.Typer()
        module.register(holder)
        for name, command in typer.main.get_group(holder).commands.items():
            self.commands.setdefault(name, command)

    def _load_all(self) -> None:
        for area in dict.fromkeys(AREAS.values()):
            self._load(area)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands:
            if cmd_name in AREAS:
                self._load(AREAS[cmd_name])
            if cmd_name not in self.commands:
                self._load_all()
        return self.commands.get(cmd_name)

    def list_commands(self, ctx) -> list[str]:
        self._load_all()
        return sorted(self.commands)


app = typer.Typer(
    cls=LazyGroup,
    add_completion=False,
    no_args_is_help=True,
    help="harvest, train, index, explain, serve, demo, features, steer, contrast, "
    "export/import, submit, jobs, db, keys.",
)


@app.callback()
def _server_options(
    server: str | None = typer.Option(
        None, envvar="SAEFEAT_SERVER", help="a saefeat server's URL: jobs are sent there"
    ),
    key: str | None = typer.Option(None, envvar="SAEFEAT_API_KEY", help="API key for --server"),
):
    """saefeat: sparse-autoencoder features, from harvest to pages."""
    from saefeat.cli.remote import SERVER

    SERVER.update(url=server, key=key)


__all__ = ["app"]
