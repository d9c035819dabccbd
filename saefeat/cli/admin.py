"""`saefeat db` and `saefeat keys`: the catalog's schema and the API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from saefeat.cli.common import console, user_errors
from saefeat.config import get_settings


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(no_args_is_help=True, help="The catalog database.")
    keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
    db_app.command("upgrade")(user_errors(db_upgrade))
    keys_app.command("create")(user_errors(keys_create))
    app.add_typer(db_app, name="db")
    app.add_typer(keys_app, name="keys")


def db_upgrade(revision: str = "head"):
    """Create or migrate the catalog schema."""
    from saefeat.storage.catalog import upgrade

    settings = get_settings()
    upgrade(settings.db_url, revision)
    console.print(f"catalog at {settings.db_url} is at {revision}")


def keys_create(
    name: str = "default",
    scope: Annotated[
        list[str] | None, typer.Option(help="read, label, jobs, explain, admin")
    ] = None,
):
    """Create an API key; the key is printed once and stored only as a hash."""
    from saefeat.storage.catalog import create_api_key
    from saefeat.storage.catalog.db import catalog_session

    with catalog_session(get_settings()) as s:
        key = create_api_key(s, name, scope or ["read", "label"])
        s.commit()
    print(key)
