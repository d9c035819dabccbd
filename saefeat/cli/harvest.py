"""`saefeat harvest`: activations of a model over a corpus, run as a job. Its options are
HarvestSpec's fields (saefeat/cli/spec_options.py), but for the corpus: `--corpus
PATH[@WEIGHT]` (repeated) with one `--field`. It prints the set's id on stdout; with
`--paired-model` (model diffing: both models on identical tokens, one job) both sets'
ids, the model's first, once the two tokenizers are found alike (saefeat/pairing.py),
which is checked before any job row is written."""

from __future__ import annotations

import inspect
import os
from typing import Annotated

import typer

from saefeat.cli.common import console, user_errors
from saefeat.cli.spec_options import KEYWORD, command, field_option, given, spec_options
from saefeat.config import Settings, get_settings
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

    Here, as a job (`saefeat jobs`); with --server (SAEFEAT_SERVER), on that server.
    Files and folders named here are read wherever they are: the CLI's user owns the
    machine. (Specs sent over HTTP are held to the corpus roots; docs/SECURITY.md; a
    path given with --server is the server's, relative to its corpus roots.)"""
    from saefeat.cli.running import on_server, run_on_server

    options = given(options)
    field = options.pop("field", None)
    remote = on_server()
    paths = options.pop("corpus", [BUILTIN_PYTHON_DOCS])
    sources = [_corpus_source(c, field, absolute=not remote) for c in paths]
    spec = HarvestSpec(**options, corpus=sources)
    if remote:  # the server checks a paired model itself (saefeat/admission.py)
        run_on_server("harvest", spec)
        print(*spec.set_ids(), sep="\n")
        return
    if spec.paired_model is not None:  # before any job row is written
        from saefeat.pairing import check_pairing

        check_pairing(spec)
    settings = get_settings()
    named = [s["path"] for s in sources if s["path"] != BUILTIN_PYTHON_DOCS]
    trusted = settings.model_copy(update={"corpus_roots": [*settings.corpus_root_paths, *named]})
    print(*(r.activation_set.id for r in harvest_as_job(spec, trusted).sides()), sep="\n")


def _corpus_source(text: str, field: str | None, absolute: bool = True) -> dict:
    """`PATH` or `PATH@WEIGHT` (a source's share when several are mixed); a path is made
    absolute here, from the working folder the user typed it in (not one for a server)."""
    source = {} if field is None else {"field": field}
    path, sep, weight = text.rpartition("@")
    if not (sep and weight.replace(".", "", 1).isdigit()):
        path, weight = text, None
    source["path"] = _absolute(path) if absolute else path
    return source if weight is None else {**source, "weight": float(weight)}


def _absolute(path: str) -> str:
    if path == BUILTIN_PYTHON_DOCS:
        return path
    return os.path.abspath(os.path.expanduser(path))


def harvest_as_job(spec, settings: Settings | None = None):
    """`saefeat harvest` here: a job row (`saefeat jobs` and the API see it) run in this
    process; one worker's harvest starts no Ray (saefeat/cli/running.py)."""
    from saefeat.cli.running import run_here

    result, job = run_here(spec, settings=settings)
    for side in result.sides():  # a paired harvest: the model's set, then the paired one's
        aset = side.activation_set
        how = "reused" if side.reused else f"{side.shards_run} shards in {side.seconds:.1f}s"
        model = f" ({aset.model_name})" if result.paired is not None else ""
        console.print(f"activation set [bold]{aset.id}[/bold]{model}: {aset.n_tokens:,} tokens "
                      f"({how})")  # fmt: skip
    if any(side.skipped for side in result.sides()):
        console.print(f"[yellow]warning:[/yellow] {job.error}", highlight=False, soft_wrap=True)
    return result
