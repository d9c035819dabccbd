"""`saefeat contrast`: the features that tell two corpora apart.

Each side is an activation set (`--a`, `--b`) or a corpus (`--a-corpus`, `--b-corpus`,
repeatable): a corpus is harvested first, with the SAE's model and hook (each harvest a
job, as `saefeat harvest` runs it), then the sets are contrasted, all in one command.
Every side is checked before the first harvest (saefeat/analysis/contrast_corpora.py): a
plain-text file is split into documents at blank lines, and a side with fewer than two
documents is refused at once, naming its option's field.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

from saefeat.cli.common import console, user_errors
from saefeat.config import Settings, get_settings
from saefeat.paths import BUILTIN_PYTHON_DOCS

CORPUS_HELP = (
    "instead of --{side}: a text/JSONL/Parquet file or folder for corpus {SIDE} (repeat to "
    "mix), harvested first with the SAE's model and hook; plain text is split into "
    "documents at blank lines"
)


def register(app: typer.Typer) -> None:
    app.command()(user_errors(contrast))


def contrast(
    sae: Annotated[str, typer.Option(help="SAE id")],
    a: Annotated[str | None, typer.Option("--a", help="activation set id of corpus A")] = None,
    b: Annotated[str | None, typer.Option("--b", help="activation set id of corpus B")] = None,
    a_corpus: Annotated[
        list[str] | None, typer.Option(help=CORPUS_HELP.format(side="a", SIDE="A"))
    ] = None,
    b_corpus: Annotated[
        list[str] | None, typer.Option(help=CORPUS_HELP.format(side="b", SIDE="B"))
    ] = None,
    field: Annotated[
        str, typer.Option(help="the JSONL / Parquet column holding text (corpora)")
    ] = "text",
    token_budget: Annotated[
        int, typer.Option("--tokens", "--token-budget", help="tokens harvested per corpus")
    ] = 100_000,
    top: Annotated[int, typer.Option(help="features listed per side")] = 20,
    window: Annotated[int, typer.Option(help="tokens of each document's firing window")] = 32,
):
    """Rank the SAE's features by how differently they fire on corpus A and corpus B:
    activation sets, or corpora harvested first (--a-corpus, --b-corpus)."""
    from saefeat.cli.running import run_here
    from saefeat.specs import ContrastSpec

    corpora = {f"{side}_corpus": [_source(p, field) for p in paths]
               for side, paths in (("a", a_corpus), ("b", b_corpus)) if paths}  # fmt: skip
    spec = ContrastSpec(sae=sae, a=a, b=b, **corpora, token_budget=token_budget, top=top,
                        window=window)  # fmt: skip
    settings = _trusting(get_settings(), corpora)
    cfg = _checked(spec, settings)  # bad input: exit 2, no job row, nothing harvested
    if spec.corpus_sides():
        _harvest_sides(spec, cfg, settings)
    result, _ = run_here(spec, settings=settings)  # a job row, like one sent over HTTP
    _print(result)


def _source(path: str, field: str) -> dict:
    """A corpus path, made absolute from the folder the user typed it in."""
    if path != BUILTIN_PYTHON_DOCS:
        path = os.path.abspath(os.path.expanduser(path))
    return {"path": path, "field": field}


def _trusting(settings: Settings, corpora: dict[str, list[dict]]) -> Settings:
    """The paths named here are read wherever they are: the CLI's user owns the machine
    (as `saefeat harvest`; specs sent over HTTP are held to the corpus roots)."""
    named = [s["path"] for sources in corpora.values() for s in sources
             if s["path"] != BUILTIN_PYTHON_DOCS]  # fmt: skip
    if not named:
        return settings
    return settings.model_copy(update={"corpus_roots": [*settings.corpus_root_paths, *named]})


def _checked(spec, settings: Settings):
    """The SAE's config once the SAE and both sides pass the checks the API makes."""
    from saefeat.analysis.contrast import check_inputs
    from saefeat.storage.catalog.db import catalog_session

    with catalog_session(settings) as s:
        return check_inputs(spec, settings, s).cfg


def _harvest_sides(spec, cfg, settings: Settings) -> None:
    """Check every corpus side's documents, then harvest each as a job (a harvested one
    is reused)."""
    from saefeat.analysis.contrast_corpora import check_before_harvest
    from saefeat.cli.harvest import harvest_as_job

    for side, harvest in check_before_harvest(spec, cfg, settings).items():
        console.print(f"corpus {side.upper()}: harvesting set {harvest.set_id()}", highlight=False)
        harvest_as_job(harvest, settings)


def _print(result) -> None:
    from rich.table import Table

    spec, st, clf = result.spec, result.stats, result.classifier
    out = Console()
    for side in ("a", "b"):
        table = Table(title=f"fires more in {side.upper()} ({getattr(spec, side)})")
        for col in ("feature", "window A", "window B", "tok A", "tok B", "log2 ratio", "p", "q"):
            table.add_column(col, justify="right")
        for f in st.ranked(side, spec.alpha, spec.top):
            table.add_row(
                str(f), f"{st.window_rate_a[f]:.3f}", f"{st.window_rate_b[f]:.3f}",
                f"{st.token_rate_a[f]:.4f}", f"{st.token_rate_b[f]:.4f}",
                f"{st.log_ratio[f]:+.2f}", f"{st.p[f]:.2g}", f"{st.q[f]:.2g}",
            )  # fmt: skip
        out.print(table)
    auroc = "n/a" if clf.auroc is None else f"{clf.auroc:.3f}"
    out.print(
        f"contrast {result.contrast_id}: {st.n_docs_a} vs {st.n_docs_b} documents, "
        f"held-out AUROC on {len(clf.features)} features {auroc}, {result.seconds:.1f}s",
        highlight=False,
    )
