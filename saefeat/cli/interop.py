"""`saefeat export` and `saefeat import`: SAELens, sparsify, circuit-tracer (export) and
Neuronpedia files."""

from __future__ import annotations

from typing import Annotated

import typer

from saefeat.cli.common import console, progress_bar, user_errors
from saefeat.config import get_settings


def register(app: typer.Typer) -> None:
    app.command("export")(user_errors(export_sae))
    app.command("import")(user_errors(import_sae))


def export_sae(
    sae: Annotated[
        str,
        typer.Option(
            help="SAE id; for circuit-tracer the transcoders' ids, comma-separated, "
            "one for each layer from 0"
        ),
    ],
    to: Annotated[
        str,
        typer.Option(help="saelens, sparsify, circuit-tracer (weights) or neuronpedia (catalog)"),
    ],
    out: Annotated[str, typer.Option(help="folder to write")],
):
    """Write a trained SAE in SAELens's or sparsify's layout, transcoders as circuit-tracer's
    per-layer set, or an SAE's catalog in Neuronpedia's.

    SAELens's cfg.json names the model by its hub id and the activation set's context size.
    circuit-tracer loads the folder from its cache: CIRCUIT_TRACER_CACHE_DIR=<parent of
    out> circuit-tracer attribute -t <name of out>."""
    from pathlib import Path

    from saefeat.errors import SpecError

    if to == "neuronpedia":  # the catalog's features, examples and labels, not weights
        from saefeat.storage.catalog.db import catalog_session
        from saefeat.storage.catalog.neuronpedia import export_neuronpedia

        with catalog_session(get_settings()) as s, progress_bar("export", "features") as bar:
            task = bar.add_task("export", total=None, info="")
            folder = export_neuronpedia(s, sae, Path(out), progress=lambda d, t: bar.update(
                task, completed=d, total=t))  # fmt: skip
        console.print(f"wrote {folder}")
        return
    from saefeat.sae.interop import FORMATS, export_stored  # torch: not for the catalog's export

    if to not in FORMATS:
        known = sorted([*FORMATS, "neuronpedia"])
        raise SpecError(f"{to!r} is not a format; use one of {known}", field="to")
    console.print(f"wrote {export_stored(get_settings(), sae, to, Path(out))}")


def import_sae(
    path: Annotated[
        str, typer.Argument(help="an SAELens or sparsify SAE, or a Neuronpedia export")
    ],
    sae_id: Annotated[str, typer.Option("--id", help="id to store it under")],
    model: Annotated[
        str | None,
        typer.Option(help="the model it reads (a hub id or local folder), if its files do not say"),
    ] = None,
    hook: Annotated[
        str | None,
        typer.Option(help="the hook it reads (blocks.6.hook_resid_post), if its files do not say"),
    ] = None,
    hook_out: Annotated[
        str | None,
        typer.Option(
            help="a transcoder's output hook (blocks.6.hook_mlp_out), if its files do not say"
        ),
    ] = None,
):
    """Read an SAELens or sparsify SAE folder (or a sparsify transcoder) into saefeat's
    checkpoint format and the catalog (listed at once; `saefeat index` gives it features)."""
    from pathlib import Path

    from saefeat.paths import inside
    from saefeat.sae.interop import import_stored

    settings = get_settings()
    inside(settings.saes_dir, sae_id, "id")  # before reading anything
    folder = Path(path)
    from saefeat.storage.catalog.neuronpedia_import import (
        import_neuronpedia,
        is_neuronpedia_folder,
    )

    if is_neuronpedia_folder(folder):  # a catalog export: features, examples, labels
        from saefeat.storage.catalog.db import catalog_session

        with catalog_session(settings) as s:
            done = import_neuronpedia(s, folder, sae_id)
        console.print(f"stored SAE {done.sae_id}: {done.n_features} features, "
                      f"{done.n_examples} examples, {done.n_labels} labels")  # fmt: skip
        return
    out = import_stored(settings, folder, sae_id, model=model, hook=hook, hook_out=hook_out)
    console.print(f"stored {out}")
