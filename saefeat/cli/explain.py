"""`saefeat explain`: automatic explanations and their scores for an indexed SAE."""

from __future__ import annotations

from typing import Annotated

import typer

from saefeat.cli.common import console, user_errors
from saefeat.errors import SpecError


def register(app: typer.Typer) -> None:
    app.command()(user_errors(explain))


def explain(
    sae: Annotated[str, typer.Option(help="SAE id")],
    features: Annotated[
        str | None, typer.Option(help="indices to explain, e.g. 0,5,10-20; default: all")
    ] = None,
    explainer: Annotated[
        str, typer.Option(help="offline, patchscope, llm, or several joined by commas")
    ] = "offline,patchscope",
    scorers: Annotated[
        str,
        typer.Option(help="comma-separated: embedding,activation,keyword,detection,fuzzing"),
    ] = "embedding,activation,keyword",
    batch: Annotated[int, typer.Option(help="features per Ray task")] = 64,
):
    """Explain and score an indexed SAE's features (the LLM endpoint: SAEFEAT_LLM_*).

    Here, as a job (`saefeat jobs`); with --server (SAEFEAT_SERVER), on that server and
    with its endpoint."""
    from saefeat.cli.running import on_server, run_on_server
    from saefeat.specs import ExplainSpec

    spec = ExplainSpec(
        sae=sae,
        features=index_ranges(features) if features else None,
        explainer=explainer,
        scorers=[s.strip() for s in scorers.split(",") if s.strip()],
        batch_features=batch,
    )
    if on_server():
        run_on_server("explain", spec)
        return
    do_explain(spec)


def do_explain(spec):
    """Explain here, as a job row (saefeat/cli/running.py), in this process."""
    from saefeat.cli.running import run_here
    from saefeat.workers.explain import validate_explain

    validate_explain(spec)  # bad input is one line, before any progress bar
    result, _ = run_here(spec)
    console.print(result.summary(), highlight=False)
    for index, error in list(result.failed.items())[:5]:
        console.print(f"  feature {index}: {error}", highlight=False, soft_wrap=True)
    return result


def index_ranges(text: str) -> list[int]:
    """'0,5,10-12' -> [0, 5, 10, 11, 12]; SpecError naming `features` otherwise."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise SpecError(
                f"{part.strip()!r} is not an index or a range a-b", field="features"
            ) from None
    return out
