"""`saefeat harvest`: activations of a model over a corpus, run as a job. Its options are
HarvestSpec's fields (saefeat/cli/spec_options.py), but for the corpus: `--corpus
PATH[@WEIGHT]` (repeated) with one `--field`."""

from __future__ import annotations

import inspect
import os
from typing import Annotated

import typer

from saefeat.cli.common import console, progress_bar, user_errors
from saefeat.cli.spec_options import KEYWORD, command, field_option, given, spec_options
from saefeat.config import Settings, get_settings
from saefeat.errors import SaefeatError
from saefeat.paths import BUILTIN_PYTHON_DOCS
from saefeat.specs import CorpusSource, HarvestSpec

# Flags that differ from the field's name (the shorter ones came first; both work).
FLAGS = {"hooks": ("--hook",), "token_budget": ("--tokens", "--token-budget"),
         "contexts_per_shard": ("--shard-contexts", "--contexts-per-shard")}  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(command(user_errors(harvest), harvest_options()))


def harvest_options() -> list[inspect.Parameter]:
    names = [n for n in HarvestSpec.model_fields if n != "corpus"]
    corpus_help = (f"{CorpusSource.model_fields['path'].description}, optionally PATH@WEIGHT "
                   "(repeat to mix sources)")  # fmt: skip
    corpus = typer.Option(help=corpus_help)
    return [
        *spec_options(HarvestSpec, names, FLAGS),
        inspect.Parameter(
            "corpus", KEYWORD, default=None, annotation=Annotated[list[str] | None, corpus]
        ),  # fmt: skip
        field_option("field", CorpusSource.model_fields["field"]),
    ]


def harvest(**options) -> None:
    """Run the model over a corpus and store activations at the hooks.

    Files and folders named here are read wherever they are: the CLI's user owns the
    machine. (Specs sent over HTTP are held to the corpus roots; docs/SECURITY.md.)"""
    options = given(options)
    field = options.pop("field", None)
    sources = [_corpus_source(c, field) for c in options.pop("corpus", [BUILTIN_PYTHON_DOCS])]
    spec = HarvestSpec(**options, corpus=sources)
    settings = get_settings()
    named = [s["path"] for s in sources if s["path"] != BUILTIN_PYTHON_DOCS]
    trusted = settings.model_copy(update={"corpus_roots": [*settings.corpus_root_paths, *named]})
    print(harvest_as_job(spec, trusted).activation_set.id)


def _corpus_source(text: str, field: str | None) -> dict:
    """`PATH` or `PATH@WEIGHT` (a source's share when several are mixed); a path is made
    absolute here, from the working folder the user typed it in."""
    source = {} if field is None else {"field": field}
    path, sep, weight = text.rpartition("@")
    if sep and weight.replace(".", "", 1).isdigit():
        return {**source, "path": _absolute(path), "weight": float(weight)}
    return {**source, "path": _absolute(text)}


def _absolute(path: str) -> str:
    if path == BUILTIN_PYTHON_DOCS:
        return path
    return os.path.abspath(os.path.expanduser(path))


def harvest_as_job(spec, settings: Settings | None = None):
    """`saefeat harvest`: the run is a job row too, so `saefeat jobs` and the API see it."""
    from saefeat.storage.catalog.db import catalog_sessions
    from saefeat.workers.jobs import JobRunner

    settings = settings or get_settings()
    with catalog_sessions(settings) as sessions:
        runner = JobRunner(settings, sessions)
        job, created = runner.submit(spec)
        if not created:
            raise SaefeatError(
                f"job {job.id} ({job.status}) is already harvesting set {job.spec_hash}; "
                "follow it with `saefeat jobs`"
            )
        with progress_bar("harvest") as bar:
            task = bar.add_task("harvest", total=None, info=f"job {job.id}")
            progress = lambda d, t: bar.update(task, completed=d, total=t)  # noqa: E731
            result = runner.run(job.id, progress=progress)
        job = runner.get(job.id)
    if result is None:
        raise SaefeatError(f"job {job.id} {job.status}: {job.error}")
    aset = result.activation_set
    how = "reused" if result.reused else f"{result.shards_run} shards in {result.seconds:.1f}s"
    console.print(f"activation set [bold]{aset.id}[/bold]: {aset.n_tokens:,} tokens ({how})")
    if result.skipped:
        console.print(f"[yellow]warning:[/yellow] {job.error}", highlight=False, soft_wrap=True)
    return result
