"""`saefeat index`: each feature's statistics, examples and vocabulary projection; its
options are IndexSpec's fields (saefeat/cli/spec_options.py)."""

from __future__ import annotations

import typer

from saefeat.cli.common import console, progress_bar, user_errors
from saefeat.cli.spec_options import command, given, spec_options
from saefeat.specs import IndexSpec


def register(app: typer.Typer) -> None:
    options = spec_options(IndexSpec, IndexSpec.model_fields, FLAGS)
    app.command()(command(user_errors(index), options))


def do_index(spec):
    from saefeat.pipeline import run_index

    with progress_bar("index") as bar:
        task = bar.add_task("index", total=None, info="")
        result = run_index(spec, progress=lambda d, t: bar.update(task, completed=d, total=t))
    console.print(
        f"indexed {result.index.d_sae:,} features over {result.index.n_tokens:,} tokens "
        f"({result.excluded_tokens:,} excluded: position 0 and massive-norm tokens) "
        f"in {result.seconds:.1f}s"
    )
    return result


# Flags that differ from the field's name (the shorter ones came first; both work).
FLAGS = {"n_examples": ("--examples", "--n-examples"), "n_vocab": ("--vocab", "--n-vocab")}


def index(**options) -> None:
    """Compute each feature's statistics, top examples and vocabulary projection."""
    do_index(IndexSpec(**given(options)))
