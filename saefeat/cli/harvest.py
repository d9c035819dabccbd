"""`saefeat harvest`: activations of a model over a corpus, run as a job."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from saefeat.cli.common import console, progress_bar, user_errors
from saefeat.config import Settings, get_settings
from saefeat.errors import SaefeatError
from saefeat.paths import BUILTIN_PYTHON_DOCS


def register(app: typer.Typer) -> None:
    app.command()(user_errors(harvest))


def harvest(
    hook: Annotated[list[str], typer.Option(help="e.g. blocks.15.hook_resid_post")],
    model: Annotated[str, typer.Option(help="HF id, local folder, .gguf file")] = "smollm2-135m",
    corpus: Annotated[
        list[str], typer.Option(help="file/folder or builtin:python-docs, optionally PATH@WEIGHT")
    ] = ["builtin:python-docs"],  # noqa: B006
    field: Annotated[str, typer.Option(help="JSONL/Parquet/dataset text field")] = "text",
    ctx_len: int = 128,
    tokens: Annotated[int, typer.Option(help="token budget")] = 100_000,
    shard_contexts: int = 64,
    storage_dtype: str = "bfloat16",
    batch_size: int = 8,
    on_bad_document: Annotated[str, typer.Option(help="fail or skip")] = "fail",
    on_nonfinite: Annotated[str, typer.Option(help="fail or drop")] = "fail",
):
    """Run the model over a corpus and store activations at the hooks.

    Files and folders named here are read wherever they are: the CLI's user owns the
    machine. (Specs sent over HTTP are held to the corpus roots; docs/SECURITY.md.)"""
    from saefeat.specs import HarvestSpec

    sources = [_corpus_source(c, field) for c in corpus]
    spec = HarvestSpec(
        model=model,
        hooks=hook,
        corpus=sources,
        ctx_len=ctx_len,
        token_budget=tokens,
        contexts_per_shard=shard_contexts,
        storage_dtype=storage_dtype,
        batch_size=batch_size,
        on_bad_document=on_bad_document,
        on_nonfinite=on_nonfinite,
    )
    settings = get_settings()
    named = [s["path"] for s in sources if s["path"] != BUILTIN_PYTHON_DOCS]
    trusted = settings.model_copy(update={"corpus_roots": [*settings.corpus_root_paths, *named]})
    print(harvest_as_job(spec, trusted).activation_set.id)


def _corpus_source(text: str, field: str) -> dict:
    """`PATH` or `PATH@WEIGHT` (a source's share when several are mixed); a path is made
    absolute here, from the working folder the user typed it in."""
    path, sep, weight = text.rpartition("@")
    if sep and weight.replace(".", "", 1).isdigit():
        return {"path": _absolute(path), "field": field, "weight": float(weight)}
    return {"path": _absolute(text), "field": field}


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
        with progress_bar("harvest", "tokens") as bar:
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
