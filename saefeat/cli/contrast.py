"""`saefeat contrast`: the features that tell two corpora (activation sets) apart."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from saefeat.cli.common import progress_bar, user_errors
from saefeat.config import get_settings


def register(app: typer.Typer) -> None:
    app.command()(user_errors(contrast))


def contrast(
    sae: Annotated[str, typer.Option(help="SAE id")],
    a: Annotated[str, typer.Option("--a", help="activation set id of corpus A")],
    b: Annotated[str, typer.Option("--b", help="activation set id of corpus B")],
    top: Annotated[int, typer.Option(help="features listed per side")] = 20,
    window: Annotated[int, typer.Option(help="tokens of each document's firing window")] = 32,
):
    """Rank the SAE's features by how differently they fire on corpus A and corpus B."""
    from rich.table import Table

    from saefeat.specs import ContrastSpec
    from saefeat.workers.contrast_job import contrast_and_record

    spec = ContrastSpec(sae=sae, a=a, b=b, top=top, window=window)
    with progress_bar("contrast") as bar:
        task = bar.add_task("contrast", total=None, info="")
        progress = lambda d, t: bar.update(task, completed=d, total=t)  # noqa: E731
        result = contrast_and_record(spec, settings=get_settings(), progress=progress)
    st, clf = result.stats, result.classifier
    out = Console()
    for side in ("a", "b"):
        table = Table(title=f"fires more in {side.upper()} ({getattr(spec, side)})")
        for col in ("feature", "window A", "window B", "tok A", "tok B", "log2 ratio", "p", "q"):
            table.add_column(col, justify="right")
        for f in st.ranked(side, spec.alpha, top):
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
