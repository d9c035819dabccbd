"""`saefeat features`: list, search, neighbours, fire (the catalog's queries)."""

from __future__ import annotations

from typing import Annotated

import typer

from saefeat.cli.common import console, model_loads, user_errors
from saefeat.config import get_settings


def register(app: typer.Typer) -> None:
    features_app = typer.Typer(no_args_is_help=True, help="Query the feature catalog.")
    for name, fn in (("list", features_list), ("search", features_search),
                     ("neighbours", features_neighbours), ("fire", features_fire)):  # fmt: skip
        features_app.command(name)(user_errors(fn))
    app.add_typer(features_app, name="features")


def _feature_line(sae_id: str, index: int, density: float, max_act: float, label: str | None):
    print(f"{sae_id}\t{index}\t{density:.5f}\t{max_act:.4g}\t{label or ''}")


def _next_page(cursor: str | None) -> None:
    if cursor:
        console.print(f"more: --cursor {cursor}", highlight=False, soft_wrap=True)


def features_list(
    sae: Annotated[str, typer.Option(help="SAE id")],
    labelled: Annotated[
        bool | None, typer.Option("--labelled/--unlabelled", help="only with / without a label")
    ] = None,
    sort: Annotated[str, typer.Option(help="max_activation or density")] = "max_activation",
    min_density: float | None = None,
    max_density: float | None = None,
    limit: int = 50,
    cursor: str | None = None,
):
    """An SAE's features (tab-separated: sae, index, density, max, label)."""
    from saefeat.storage.catalog import labels, queries
    from saefeat.storage.catalog.db import catalog_session

    with catalog_session(get_settings()) as s:
        page = queries.list_features(
            s, sae, sort=sort, min_density=min_density, max_density=max_density,  # type: ignore[arg-type]
            labelled=labelled, limit=limit, cursor=cursor,
        )  # fmt: skip
        current = labels.current_labels(s, [f.id for f in page.items])
        for f in page.items:
            label = current.get(f.id)
            _feature_line(f.sae_id, f.index, f.density, f.max_activation, label and label.text)
    _next_page(page.next_cursor)


def features_search(
    label: Annotated[str | None, typer.Option(help='label text: words, "phrase", OR, -x')] = None,
    token: Annotated[str | None, typer.Option(help="a token of the vocabulary projection")] = None,
    sae: Annotated[str | None, typer.Option(help="only this SAE")] = None,
    limit: int = 50,
    cursor: str | None = None,
):
    """Features by label (full-text) or by a vocabulary token."""
    from saefeat.errors import SpecError
    from saefeat.storage.catalog import label_search, labels, token_search
    from saefeat.storage.catalog.db import catalog_session

    if (label is None) == (token is None):
        raise SpecError("give exactly one of --label and --token", field="search")
    with catalog_session(get_settings()) as s:
        if label is not None:
            found = label_search.search_labels(s, label, sae_id=sae, limit=limit, cursor=cursor)
            for m in found.items:
                f = m.feature
                _feature_line(f.sae_id, f.index, f.density, f.max_activation, m.label.text)
            _next_page(found.next_cursor)
            return
        page = token_search.search_tokens(s, token or "", sae_id=sae, limit=limit, cursor=cursor)
        current = labels.current_labels(s, [m.feature.id for m in page.items])
        for m in page.items:
            f, lb = m.feature, current.get(m.feature.id)
            _feature_line(f.sae_id, f.index, f.density, f.max_activation, lb and lb.text)
        _next_page(page.next_cursor)


def features_neighbours(
    sae: Annotated[str, typer.Option(help="SAE id")],
    index: Annotated[int, typer.Option(help="feature index")],
):
    """The features with the most similar decoder rows (tab-separated, with the cosine)."""
    from saefeat.storage.catalog import feature_reads, labels, queries
    from saefeat.storage.catalog.db import catalog_session

    with catalog_session(get_settings()) as s:
        feature = queries.get_feature(s, sae, index)
        near = feature_reads.feature_neighbours(s, feature.id)
        current = labels.current_labels(s, [n.feature.id for n in near])
        for n in near:
            lb = current.get(n.feature.id)
            print(f"{n.feature.sae_id}\t{n.feature.index}\t{n.cosine:.4f}\t{lb.text if lb else ''}")


def features_fire(
    sae: Annotated[str, typer.Option(help="SAE id")],
    text: Annotated[str, typer.Argument(help="text to run through the model and the SAE")],
    top: int = 5,
):
    """Which features fire on TEXT: each token with its strongest features."""
    from saefeat.errors import SpecError
    from saefeat.features.live import features_for_sae
    from saefeat.storage.catalog import queries
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.set_registry import sae_model

    with catalog_session(get_settings()) as s:
        row = queries.get_sae(s, sae)
        if not row.checkpoint_path:
            raise SpecError("has no checkpoint here, so it cannot be run on text", field="sae")
        model_name, revision = sae_model(s, row)
        checkpoint, hook = row.checkpoint_path, row.hook_name
    with model_loads():
        tokens = features_for_sae(model_name, revision, checkpoint, hook, text, top)
    for t in tokens:
        feats = "  ".join(f"{f}:{v:.3g}" for f, v in t.features)
        print(f"{t.position}\t{t.token!r}\t{feats}")
