"""`saefeat index`: each feature's statistics, examples and vocabulary projection."""

from __future__ import annotations

from typing import Annotated

import typer

from saefeat.cli.common import console, progress_bar, user_errors


def register(app: typer.Typer) -> None:
    app.command()(user_errors(index))


def do_index(spec):
    from saefeat.pipeline import run_index

    with progress_bar("index", "tasks") as bar:
        task = bar.add_task("index", total=None, info="")
        result = run_index(spec, progress=lambda d, t: bar.update(task, completed=d, total=t))
    console.print(
        f"indexed {result.index.d_sae:,} features over {result.index.n_tokens:,} tokens "
        f"({result.excluded_tokens:,} excluded: position 0 and massive-norm tokens) "
        f"in {result.seconds:.1f}s"
    )
    return result


def index(
    sae: Annotated[str, typer.Option(help="SAE id")],
    examples: int = 20,
    window: int = 8,
    vocab: int = 20,
):
    """Compute each feature's statistics, top examples and vocabulary projection."""
    from saefeat.specs import IndexSpec

    do_index(IndexSpec(sae=sae, n_examples=examples, window=window, n_vocab=vocab))
