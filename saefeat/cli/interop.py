"""`saefeat export` and `saefeat import`: SAELens, sparsify and Neuronpedia files."""

from __future__ import annotations

from typing import Annotated

import typer

from saefeat.cli.common import console, user_errors
from saefeat.config import get_settings


def register(app: typer.Typer) -> None:
    app.command("export")(user_errors(export_sae))
    app.command("import")(user_errors(import_sae))


def export_sae(
    sae: Annotated[str, typer.Option(help="SAE id")],
    to: Annotated[str, typer.Option(help="saelens, sparsify (weights) or neuronpedia (catalog)")],
    out: Annotated[str, typer.Option(help="folder to write")],
):
    """Write a trained SAE in SAELens's or sparsify's layout, or its catalog in Neuronpedia's."""
    from pathlib import Path

    from saefeat.errors import SpecError
    from saefeat.paths import inside
    from saefeat.sae import load_sae
    from saefeat.sae.interop import export_saelens, export_sparsify

    if to == "neuronpedia":  # the catalog's features, examples and labels, not weights
        from saefeat.storage.catalog.db import catalog_session
        from saefeat.storage.catalog.neuronpedia import export_neuronpedia

        with catalog_session(get_settings()) as s:
            console.print(f"wrote {export_neuronpedia(s, sae, Path(out))}")
        return
    writers = {"saelens": export_saelens, "sparsify": export_sparsify}
    if to not in writers:
        known = sorted([*writers, "neuronpedia"])
        raise SpecError(f"{to!r} is not a format; use one of {known}", field="to")
    # --out is the user's own choice; the SAE is read only from the SAE folder.
    path = writers[to](load_sae(inside(get_settings().saes_dir, sae, "sae")), Path(out))
    console.print(f"wrote {path}")


def import_sae(
    path: Annotated[
        str, typer.Argument(help="an SAELens or sparsify SAE, or a Neuronpedia export")
    ],
    sae_id: Annotated[str, typer.Option("--id", help="id to store it under")],
):
    """Read an SAELens or sparsify SAE folder into saefeat's checkpoint format."""
    from pathlib import Path

    from saefeat.errors import SpecError
    from saefeat.paths import inside
    from saefeat.sae.interop import import_saelens, import_sparsify

    dest = inside(get_settings().saes_dir, sae_id, "id")  # before reading anything
    folder = Path(path)
    from saefeat.storage.catalog.neuronpedia_import import (
        import_neuronpedia,
        is_neuronpedia_folder,
    )

    if is_neuronpedia_folder(folder):  # a catalog export: features, examples, labels
        from saefeat.storage.catalog.db import catalog_session

        with catalog_session(get_settings()) as s:
            done = import_neuronpedia(s, folder, sae_id)
        console.print(f"stored SAE {done.sae_id}: {done.n_features} features, "
                      f"{done.n_examples} examples, {done.n_labels} labels")  # fmt: skip
        return
    if (folder / "sae_weights.safetensors").is_file():
        sae = import_saelens(folder)
    elif (folder / "sae.safetensors").is_file():
        sae = import_sparsify(folder)
    else:
        raise SpecError(f"{path} holds neither sae_weights.safetensors nor sae.safetensors",
                        field="path")  # fmt: skip
    out = sae.save(dest)
    console.print(f"stored {out}")
