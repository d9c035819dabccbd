"""`saefeat index`: each feature's statistics, examples and vocabulary projection; its
options are IndexSpec's fields (saefeat/cli/spec_options.py)."""

from __future__ import annotations

import typer

from saefeat.cli.common import console, user_errors
from saefeat.cli.spec_options import command, given, spec_options
from saefeat.specs import IndexSpec


def register(app: typer.Typer) -> None:
    options = spec_options(IndexSpec, IndexSpec.model_fields, FLAGS)
    app.command()(command(user_errors(index), options))


def do_index(spec):
    """Index here, as a job row (saefeat/cli/running.py), in this process."""
    from saefeat.cli.running import run_here

    result, _ = run_here(spec, index_here)
    console.print(
        f"indexed {result.index.d_sae:,} features over {result.index.n_tokens:,} tokens "
        f"({result.excluded_tokens:,} excluded: position 0 and massive-norm tokens) "
        f"in {result.seconds:.1f}s"
    )
    return result


def index_here(spec, *, settings, progress, should_stop, note):
    """The index kind's work in this process (its own runs it in a Ray task)."""
    from saefeat.storage.catalog.job_status import JobStatus
    from saefeat.workers.index_job import index_and_record
    from saefeat.workers.job_kinds import JobOutcome

    return JobOutcome(JobStatus.SUCCEEDED, None,
                      index_and_record(spec, settings=settings, progress=progress))  # fmt: skip


# Flags that differ from the field's name (the shorter ones came first; both work).
FLAGS = {"n_examples": ("--examples", "--n-examples"), "n_vocab": ("--vocab", "--n-vocab")}


def index(**options) -> None:
    """Compute each feature's statistics, top examples and vocabulary projection.

    Here, as a job (`saefeat jobs`); with --server (SAEFEAT_SERVER), on that server."""
    from saefeat.cli.running import on_server, run_on_server

    spec = IndexSpec(**given(options))
    if on_server():
        run_on_server("index", spec)
        return
    do_index(spec)
