"""The `saefeat` command line: harvest, train, index, serve, demo, db, keys."""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from saefeat.config import Settings, get_settings
from saefeat.errors import SaefeatError
from saefeat.paths import BUILTIN_PYTHON_DOCS

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="The catalog database.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)

DEFAULT_PORT = 8000
submit_app = typer.Typer(no_args_is_help=True, help="Submit a job to a remote server (--server).")
app.add_typer(submit_app, name="submit")
_server: dict[str, str | None] = {"url": None, "key": None}  # set by --server / --key


@app.callback()
def _global(
    server: Annotated[
        str | None, typer.Option(envvar="SAEFEAT_SERVER", help="a remote saefeat server's URL")
    ] = None,
    key: Annotated[
        str | None, typer.Option(envvar="SAEFEAT_API_KEY", help="API key for --server")
    ] = None,
):
    """saefeat: sparse-autoencoder features, from harvest to pages."""
    _server.update(url=server, key=key)


def _remote():
    from saefeat.remote import Remote

    if not _server["url"]:
        raise SaefeatError("this needs a server: pass --server URL (or set SAEFEAT_SERVER)",
                           field="server")  # fmt: skip
    return Remote(_server["url"], _server["key"])


def user_errors(fn):
    """A user's mistake is one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SaefeatError as e:
            console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "spec"
            msg = first["msg"].removeprefix("Value error, ")
            console.print(f"[red]error:[/red] {field}: {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _bar(description: str, unit: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def do_train(spec):
    from saefeat.pipeline import run_train

    with _bar("train", "steps") as bar:
        task = bar.add_task("train", total=None, info="")

        def progress(step, total, loss):
            bar.update(task, completed=step, total=total, info=f"loss {loss:.4f}")

        result = run_train(spec, progress=progress)
    console.print(f"SAE [bold]{result.sae_id}[/bold] in {result.seconds:.1f}s -> "
                  f"{result.checkpoint}")  # fmt: skip
    console.print(held_out_summary(result.metrics), highlight=False)
    return result


def held_out_summary(mt: dict) -> str:
    """The held-out figures of a trained SAE, as `saefeat train` and the demo print them."""
    held, ex, tr = mt["heldout"], mt["excluded_tokens"], mt["excluded_tokens_train"]
    where = (f"{held['contexts']} held-out contexts" if held["held_out_of_training_set"]
             else f"eval set {held['eval_set']} ({held['contexts']} contexts)")  # fmt: skip
    ce = (f"CE loss recovered {mt['ce_loss_recovered']:.3f}, KL {mt['kl_div_with_sae']:.4f}"
          if "ce_loss_recovered" in mt else "CE/KL not measured")  # fmt: skip
    positions = ", ".join(f"{p}: {n}" for p, n in ex["massive_positions"].items()) or "none"
    return (
        f"held-out ({where}, {mt['n_tokens']:,} typical tokens): FVU {mt['fvu']:.4f} "
        f"(all tokens but position 0: {mt['fvu_all_tokens']:.4f}), L0 {mt['l0']:.1f}, "
        f"dead {mt['dead_frac']:.2%}, dense {mt['dense_frac']:.2%}, {ce}\n"
        f"excluded ({ex['rule']}): held-out {ex['excluded']:,} of {ex['tokens']:,} tokens "
        f"({ex['massive']} massive; positions {positions}); training "
        f"{tr['excluded']:,} of {tr['tokens']:,} ({tr['massive']} massive)"
    )


def do_index(spec):
    from saefeat.pipeline import run_index

    with _bar("index", "tasks") as bar:
        task = bar.add_task("index", total=None, info="")
        result = run_index(spec, progress=lambda d, t: bar.update(task, completed=d, total=t))
    console.print(
        f"indexed {result.index.d_sae:,} features over {result.index.n_tokens:,} tokens "
        f"({result.excluded_tokens:,} excluded: position 0 and massive-norm tokens) "
        f"in {result.seconds:.1f}s"
    )
    return result


@app.command()
@user_errors
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


@app.command()
@user_errors
def train(
    activation_set: Annotated[str, typer.Option("--set", help="activation set id")],
    hook: str | None = None,
    architecture: Annotated[
        str, typer.Option(help="topk, batchtopk, jumprelu, relu, matryoshka_batchtopk")
    ] = "topk",
    d_sae: int | None = None,
    expansion_factor: int = 8,
    k: int = 32,
    batch_size: int = 256,
    lr: float | None = None,
    epochs: float = 2.0,
    seed: int = 0,
    eval_set: Annotated[
        str | None, typer.Option(help="evaluate on this set (same model, hook, width)")
    ] = None,
    heldout_frac: Annotated[
        float, typer.Option(help="share of the set's contexts held out for evaluation")
    ] = 0.05,
    massive_norm_threshold: Annotated[
        float, typer.Option(help="leave out tokens whose norm exceeds this x the median")
    ] = 10.0,
):
    """Train an SAE (TopK by default) on an activation set; print its held-out metrics."""
    from saefeat.specs import TrainSpec

    spec = TrainSpec(
        activation_set=activation_set, hook=hook, architecture=architecture, d_sae=d_sae,
        expansion_factor=expansion_factor, k=k, batch_size=batch_size, lr=lr, epochs=epochs,
        seed=seed, eval_set=eval_set, heldout_frac=heldout_frac,
        massive_norm_threshold=massive_norm_threshold,
    )  # fmt: skip
    print(do_train(spec).sae_id)


@app.command()
@user_errors
def index(
    sae: Annotated[str, typer.Option(help="SAE id")],
    examples: int = 20,
    window: int = 8,
    vocab: int = 20,
):
    """Compute each feature's statistics, top examples and vocabulary projection."""
    from saefeat.specs import IndexSpec

    do_index(IndexSpec(sae=sae, n_examples=examples, window=window, n_vocab=vocab))


@app.command()
@user_errors
def explain(
    sae: Annotated[str, typer.Option(help="SAE id")],
    features: Annotated[
        str | None, typer.Option(help="indices to explain, e.g. 0,5,10-20; default: all")
    ] = None,
    explainer: Annotated[str, typer.Option(help="offline or llm")] = "offline",
    scorers: Annotated[
        str, typer.Option(help="comma-separated: embedding,activation,detection,fuzzing")
    ] = "embedding,activation",
    batch: Annotated[int, typer.Option(help="features per Ray task")] = 64,
):
    """Explain and score an indexed SAE's features (the LLM endpoint: SAEFEAT_LLM_*)."""
    from saefeat.interp.spec import ExplainSpec
    from saefeat.workers.explain import run_explain, validate_explain

    spec = ExplainSpec(
        sae=sae,
        features=_index_ranges(features) if features else None,
        explainer=explainer,  # type: ignore[arg-type]
        scorers=[s.strip() for s in scorers.split(",") if s.strip()],
        batch_features=batch,
    )
    validate_explain(spec)  # bad input is one line, before any progress bar
    with _bar("explain", "features") as bar:
        task = bar.add_task("explain", total=None, info="")
        result = run_explain(spec, progress=lambda d, t: bar.update(task, completed=d, total=t))
    console.print(result.summary(), highlight=False)
    for index, error in list(result.failed.items())[:5]:
        console.print(f"  feature {index}: {error}", highlight=False, soft_wrap=True)


def _index_ranges(text: str) -> list[int]:
    """'0,5,10-12' -> [0, 5, 10, 11, 12]; SpecError naming `features` otherwise."""
    from saefeat.errors import SpecError

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


@app.command()
@user_errors
def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    workers: Annotated[
        int, typer.Option(min=1, help="processes; one per core serves the most requests")
    ] = 1,
):
    """Serve the API and the feature pages."""
    import uvicorn

    from saefeat.api.app import create_app

    settings = get_settings()
    console.print(f"serving on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
        return
    # Each worker process builds its own app from the environment; migrate once, first.
    from saefeat.storage.catalog.db import upgrade
    from saefeat.workers.runtime import ensure_ray

    upgrade(settings.db_url)
    # One Ray for all of them, owned by this (the supervising) process's main thread;
    # the workers join it as drivers.
    ensure_ray(settings)
    if not settings.ray_address:
        import ray

        os.environ["SAEFEAT_RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    uvicorn.run("saefeat.api.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level="warning")  # fmt: skip


@app.command()
@user_errors
def demo(
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve")] = True,
    tokens: int = 100_000,
    port: int = DEFAULT_PORT,
):
    """harvest -> train -> index -> serve on SmolLM2-135M and the built-in corpus."""
    from saefeat.demo import print_features, run_demo

    sae_id = run_demo(tokens=tokens, harvest=harvest_as_job, train=do_train, index=do_index)
    print_features(sae_id, n=5)
    if serve_after:
        serve(port=port)


@app.command("export")
@user_errors
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
        from saefeat.pipeline import catalog_session
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


@app.command("import")
@user_errors
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
        from saefeat.pipeline import catalog_session

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


@db_app.command("upgrade")
@user_errors
def db_upgrade(revision: str = "head"):
    """Create or migrate the catalog schema."""
    from saefeat.storage.catalog import upgrade

    settings = get_settings()
    upgrade(settings.db_url, revision)
    console.print(f"catalog at {settings.db_url} is at {revision}")


@keys_app.command("create")
@user_errors
def keys_create(
    name: str = "default",
    scope: Annotated[list[str], typer.Option(help="read, label, admin")] = ["read", "label"],  # noqa: B006
):
    """Create an API key; the key is printed once and stored only as a hash."""
    from saefeat.pipeline import catalog_session
    from saefeat.storage.catalog import create_api_key

    with catalog_session(get_settings()) as s:
        key = create_api_key(s, name, scope)
        s.commit()
    print(key)


def main() -> None:  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(app())


# ---- catalog queries (issue 3) ------------------------------------------------------

features_app = typer.Typer(no_args_is_help=True, help="Query the feature catalog.")
app.add_typer(features_app, name="features")


def _feature_line(sae_id: str, index: int, density: float, max_act: float, label: str | None):
    print(f"{sae_id}\t{index}\t{density:.5f}\t{max_act:.4g}\t{label or ''}")


def _next_page(cursor: str | None) -> None:
    if cursor:
        console.print(f"more: --cursor {cursor}", highlight=False, soft_wrap=True)


@features_app.command("list")
@user_errors
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
    from saefeat.pipeline import catalog_session
    from saefeat.storage.catalog import labels, queries

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


@features_app.command("search")
@user_errors
def features_search(
    label: Annotated[str | None, typer.Option(help='label text: words, "phrase", OR, -x')] = None,
    token: Annotated[str | None, typer.Option(help="a token of the vocabulary projection")] = None,
    sae: Annotated[str | None, typer.Option(help="only this SAE")] = None,
    limit: int = 50,
    cursor: str | None = None,
):
    """Features by label (full-text) or by a vocabulary token."""
    from saefeat.errors import SpecError
    from saefeat.pipeline import catalog_session
    from saefeat.storage.catalog import label_search, labels, queries

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
        page = queries.search_by_token(s, token or "", sae_id=sae, limit=limit, cursor=cursor)
        current = labels.current_labels(s, [m.feature.id for m in page.items])
        for m in page.items:
            f, lb = m.feature, current.get(m.feature.id)
            _feature_line(f.sae_id, f.index, f.density, f.max_activation, lb and lb.text)
        _next_page(page.next_cursor)


@features_app.command("neighbours")
@user_errors
def features_neighbours(
    sae: Annotated[str, typer.Option(help="SAE id")],
    index: Annotated[int, typer.Option(help="feature index")],
):
    """The features with the most similar decoder rows (tab-separated, with the cosine)."""
    from saefeat.pipeline import catalog_session
    from saefeat.storage.catalog import labels, queries

    with catalog_session(get_settings()) as s:
        feature = queries.get_feature(s, sae, index)
        near = queries.feature_neighbours(s, feature.id)
        current = labels.current_labels(s, [n.feature.id for n in near])
        for n in near:
            lb = current.get(n.feature.id)
            print(f"{n.feature.sae_id}\t{n.feature.index}\t{n.cosine:.4f}\t{lb.text if lb else ''}")


@features_app.command("fire")
@user_errors
def features_fire(
    sae: Annotated[str, typer.Option(help="SAE id")],
    text: Annotated[str, typer.Argument(help="text to run through the model and the SAE")],
    top: int = 5,
):
    """Which features fire on TEXT: each token with its strongest features."""
    from saefeat.errors import SpecError
    from saefeat.features.live import features_for_sae
    from saefeat.pipeline import catalog_session
    from saefeat.storage.catalog import queries

    with catalog_session(get_settings()) as s:
        row = queries.get_sae(s, sae)
        if not row.checkpoint_path:
            raise SpecError("has no checkpoint here, so it cannot be run on text", field="sae")
        model_name, checkpoint, hook = row.model_name, row.checkpoint_path, row.hook_name
    for t in features_for_sae(model_name, checkpoint, hook, text, top):
        feats = "  ".join(f"{f}:{v:.3g}" for f, v in t.features)
        print(f"{t.position}\t{t.token!r}\t{feats}")


@app.command()
@user_errors
def steer(
    sae: Annotated[str, typer.Option(help="SAE id")],
    prompt: Annotated[str, typer.Option(help="text to continue")],
    feature: Annotated[list[str], typer.Option(help="INDEX:STRENGTH, e.g. 123:8.0; repeatable")],
    method: Annotated[str, typer.Option(help="add or clamp")] = "add",
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    seed: int = 0,
    max_new_tokens: int = 32,
):
    """Continue PROMPT with features added or clamped, beside the default continuation."""
    from saefeat.analysis.steer import FeatureStrength, SteerRequest, check_request, steer_for_sae
    from saefeat.errors import SpecError
    from saefeat.pipeline import catalog_session
    from saefeat.storage.catalog import queries

    pairs = []
    for n, text in enumerate(feature):
        index, sep, strength = text.partition(":")
        try:
            pairs.append(FeatureStrength(int(index), float(strength)))
        except ValueError:
            raise SpecError(f"{text!r} is not INDEX:STRENGTH", field=f"feature.{n}") from None
    request = SteerRequest(prompt, tuple(pairs), method, temperature, seed, max_new_tokens)  # type: ignore[arg-type]
    limit = get_settings().steer_max_new_tokens
    with catalog_session(get_settings()) as s:
        row = queries.get_sae(s, sae)
        check_request(request, d_sae=row.d_sae, max_new_tokens=limit)
        if not row.checkpoint_path:
            raise SpecError("has no checkpoint here, so it cannot steer", field="sae")
        model_name, checkpoint, hook = row.model_name, row.checkpoint_path, row.hook_name
    result = steer_for_sae(model_name, checkpoint, hook, request, max_new_tokens=limit)
    for p in result.promoted:
        print(f"feature {p.index} promotes: {' '.join(repr(t) for t in p.tokens)}")
    for name, run in (("default", result.default), ("steered", result.steered)):
        means = "  ".join(f"{m:.3f}" for m in run.mean_promoted_logprob())
        print(f"--- {name} (mean log-prob of promoted tokens: {means})\n{prompt}{run.text}")


def _remote_jobs(limit: int, watch: bool) -> None:
    from rich.table import Table

    from saefeat.remote import watch as watch_jobs

    remote = _remote()
    if watch:
        watch_jobs(remote, None, console)
        return
    table = Table("id", "kind", "status", "progress", "rate/s", "eta s", "created", "error")
    for j in remote.jobs(limit):
        done, total = j["progress_done"], j["progress_total"]
        stages = " ".join(f"{s['stage']}:{s['status']}" for s in j.get("stages") or [])
        table.add_row(
            j["id"], j["kind"], j["status"] + (f" ({stages})" if stages else ""),
            f"{done:,}/{total or 0:,}", f"{j['rate']:,.1f}" if j["rate"] else "-",
            f"{j['eta_seconds']:.0f}" if j["eta_seconds"] is not None else "-",
            j["created_at"][:16], (j.get("error") or "")[:60],
        )  # fmt: skip
    Console().print(table)


def harvest_as_job(spec, settings: Settings | None = None):
    """`saefeat harvest`: the run is a job row too, so `saefeat jobs` and the API see it."""
    from saefeat.pipeline import catalog_sessions
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
        with _bar("harvest", "tokens") as bar:
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


@submit_app.command("pipeline")
@user_errors
def submit_pipeline(spec: Annotated[str, typer.Argument(help="JSON file, - for stdin, or JSON")],
                    watch: bool = False):  # fmt: skip
    """Submit a pipeline (harvest -> train -> index) spec."""
    _submit("pipeline", spec, watch)


@submit_app.command("train")
@user_errors
def submit_train(spec: Annotated[str, typer.Argument(help="JSON file, - for stdin, or JSON")],
                 watch: bool = False):  # fmt: skip
    """Submit a training: a TrainSpec, or {"specs": [...], "device": ..., "resources": ...}."""
    _submit("train", spec, watch)


@submit_app.command("index")
@user_errors
def submit_index(spec: Annotated[str, typer.Argument(help="JSON file, - for stdin, or JSON")],
                 watch: bool = False):  # fmt: skip
    """Submit an indexing (an IndexSpec)."""
    _submit("index", spec, watch)


@submit_app.command("harvest")
@user_errors
def submit_harvest(spec: Annotated[str, typer.Argument(help="JSON file, - for stdin, or JSON")],
                   watch: bool = False):  # fmt: skip
    """Submit a harvest (a HarvestSpec)."""
    _submit("harvest", spec, watch)


def _submit(kind: str, text: str, watch: bool) -> None:
    import json
    from pathlib import Path

    from saefeat.errors import SpecError
    from saefeat.remote import watch as watch_jobs

    remote = _remote()
    if text == "-":
        text = sys.stdin.read()
    elif not text.lstrip().startswith("{"):
        try:
            text = Path(text).read_text()
        except OSError as e:
            raise SpecError(f"cannot read {text}: {e.strerror}", field="spec") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"not JSON: {e}", field="spec") from None
    accepted = remote.submit(kind, body)
    print(accepted["job_id"])
    if watch:
        _report(watch_jobs(remote, [accepted["job_id"]], console))


def _report(jobs: list[dict]) -> None:
    failed = [j for j in jobs if j["status"] != "succeeded"]
    for j in failed:
        console.print(f"[red]{j['kind']} {j['id']} {j['status']}[/red]: {j.get('error') or ''}",
                      highlight=False, soft_wrap=True)  # fmt: skip
    if failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def jobs(
    limit: Annotated[int, typer.Option(help="newest N jobs")] = 20,
    watch: Annotated[bool, typer.Option(help="follow the active jobs live (--server)")] = False,
):
    """List jobs, newest first: status, progress, rate, error (of --server, if given)."""
    from rich.table import Table

    if _server["url"]:
        _remote_jobs(limit, watch)
        return
    if watch:
        raise SaefeatError("--watch follows a server's jobs: pass --server URL", field="watch")
    from sqlalchemy import select

    from saefeat.pipeline import catalog_session
    from saefeat.storage.catalog.models import Job

    table = Table("id", "kind", "status", "progress", "tok/s", "created", "error")
    with catalog_session(get_settings()) as s:
        for j in s.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)):
            pct = f"{j.progress_done / j.progress_total:.0%}" if j.progress_total else "-"
            table.add_row(
                j.id,
                j.kind,
                j.status,
                f"{j.progress_done:,}/{j.progress_total or 0:,} ({pct})",
                f"{j.rate:,.0f}" if j.rate else "-",
                f"{j.created_at:%Y-%m-%d %H:%M}",
                (j.error or "")[:60],
            )
    Console().print(table)


# ---- contrastive features (issue 15) ----------------------------------------------------


@app.command()
@user_errors
def contrast(
    sae: Annotated[str, typer.Option(help="SAE id")],
    a: Annotated[str, typer.Option("--a", help="activation set id of corpus A")],
    b: Annotated[str, typer.Option("--b", help="activation set id of corpus B")],
    top: Annotated[int, typer.Option(help="features listed per side")] = 20,
    window: Annotated[int, typer.Option(help="tokens of each document's firing window")] = 32,
):
    """Rank the SAE's features by how differently they fire on corpus A and corpus B."""
    from rich.table import Table

    from saefeat.analysis.contrast import ContrastSpec, run_contrast
    from saefeat.pipeline import catalog_session
    from saefeat.storage.catalog.contrasts import write_contrast

    spec = ContrastSpec(sae=sae, a=a, b=b, top=top, window=window)
    with _bar("contrast", "tasks") as bar:
        task = bar.add_task("contrast", total=None, info="")
        result = run_contrast(spec, progress=lambda d, t: bar.update(task, completed=d, total=t))
    with catalog_session(get_settings()) as s:
        write_contrast(s, result)
        s.commit()
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
