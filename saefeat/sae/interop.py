"""Export to and import from the SAELens and sparsify checkpoint layouts (and the export
of transcoders to circuit-tracer's, which `saefeat/sae/circuit_tracer.py` writes).

SAELens (sae-lens 6.x, `SAE.save_model`): a folder with `cfg.json` (`architecture`
standard / topk / jumprelu, `d_in`, `d_sae`, `dtype`, `device`, `apply_b_dec_to_input`,
`normalize_activations`, `reshape_activations`, TopK's `k` and
`rescale_acts_by_decoder_norm`, `metadata` {model_name, hook_name, context_size, ...}) and
`sae_weights.safetensors` with W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec
(+ threshold [d_sae] for jumprelu). Our BatchTopK and Matryoshka SAEs infer as JumpReLU
with their stored threshold, so they export as jumprelu (as SAELens saves its own).

sparsify (eai-sparsify, `SparseCoder.save_to_disk`): one folder per hookpoint with
`cfg.json` (SparseCoderConfig's fields + `d_in`) and `sae.safetensors` with
encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec [d_in]. TopK only.
A transcoder is `transcode: true` (its encoder reads x, not x - b_dec; b_dec is the
output's bias, as ours) with one width in and out, and `skip_connection: true` adds
W_skip [d_in, d_in] (output += x @ W_skip.T, ours too). sparsify's skip connection on an
SAE (transcode false) has no counterpart here and is refused.

Both compute relu / topk / jumprelu of (x - b_dec) @ W_enc + b_enc for an SAE, as we do,
so weights map one to one; our input normalisation is already folded into the weights.
SAELens's layout is written for SAEs only: a transcoder is refused there (SAELens's own
transcoder classes are not mapped yet). circuit-tracer's per-layer transcoder sets are
`saefeat/sae/circuit_tracer.py`'s (`export_circuit_tracer`), export only.

What the files say of the model, for other tools to act on it: SAELens's
`metadata.model_name` is the model's hub id (our embedded alias `smollm2-135m` stands for
HuggingFaceTB/SmolLM2-135M-Instruct, `shapes.hub_model_id`), `context_size` the activation
set's ctx_len, `prepend_bos` its BOS policy, and a revision other than the default rides in
`model_from_pretrained_kwargs`. `metadata.sae_lens_version` marks the cfg as 6.x's layout
(without it SAELens reads the file as a pre-6 one and drops the metadata). The name saefeat
loads the model by (`saefeat_model`) and the set (`saefeat_activation_set`) ride along, so
an SAE exported and imported again names the same model. sparsify's files name neither
model nor hook; our export adds them as keys sparsify ignores (`saefeat_model`,
`saefeat_hook`, and a transcoder's `saefeat_hook_out`), and import otherwise reads the
hook from the folder name (sparsify's hookpoint, `layers.6` = `blocks.6.hook_resid_post`)
and the model from the run folder's `config.json`. A sparsify transcoder's hookpoint is
the module it stands in for, read from its input and written at its output: `layers.6.mlp`
(or `h.6.mlp`) is `blocks.6.ln2.hook_normalized` (what the MLP reads, after its norm)
-> `blocks.6.hook_mlp_out`; of any other module the hooks must be passed.

`export_stored` and `import_stored` are what `saefeat export` and `saefeat import` run:
export reads the model, revision and context size from the SAE's activation set (the Zarr
set, else its catalog row), and to circuit-tracer takes one transcoder id a layer; import
saves the checkpoint and registers it in the catalog (`storage/catalog/registry.py`), so
the SAE is listed (GET /v1/saes) and its pages open before it has an index.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from saefeat.errors import NotFoundError, SpecError
from saefeat.sae.base import SAEConfig, SparseAutoencoder, load_sae, sae_class
from saefeat.shapes import check_transcoder_hooks, hub_model_id, parse_hook

if TYPE_CHECKING:
    from saefeat.config import Settings

SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
# our architecture -> SAELens's (inference) architecture
TO_SAELENS = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu",
              "batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu"}  # fmt: skip
FROM_SAELENS = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu"}
# The cfg.json layout we write is SAELens 6's (metadata nested, architecture named).
SAELENS_FORMAT_VERSION = "6.0.0"
FORMATS = ("saelens", "sparsify", "circuit-tracer")


def _weights(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in sae.state_dict().items()}


def _new_folder(path: Path) -> Path:
    path = Path(path)
    try:
        if path.exists() and any(path.iterdir()):
            raise SpecError(f"{path} exists and is not empty; refusing to overwrite", field="out")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the path, no permission
        raise SpecError(f"cannot create {path}: {e.strerror}", field="out") from None
    return path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise NotFoundError(f"no checkpoint at {path.parent} ({path.name} missing)")
    return json.loads(path.read_text())


# ---- SAELens ------------------------------------------------------------------------


def export_saelens(
    sae: SparseAutoencoder,
    path: Path,
    *,
    model_name: str | None = None,
    context_size: int | None = None,
    revision: str | None = None,
    prepend_bos: bool = True,
) -> Path:
    """Write `sae` as SAELens's folder. `model_name` defaults to the checkpoint's model;
    either way the file names its hub id. `context_size` is the activation set's ctx_len
    (export_stored finds it; None when unknown). SAEs only: a transcoder is refused."""
    cfg = sae.cfg
    if cfg.is_transcoder:
        raise SpecError(f"this is a transcoder ({cfg.hook} -> {cfg.hook_out}); the SAELens "
                        "export writes SAEs only: use sparsify or circuit-tracer",
                        field="hook_out")  # fmt: skip
    arch = TO_SAELENS[cfg.architecture]
    weights = _weights(sae)
    if arch != "jumprelu":
        weights.pop("threshold", None)
    ours = model_name or cfg.model
    out = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # our scale is folded into the weights
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,  # trained by saefeat, not SAELens
            "model_name": hub_model_id(ours) if ours else None,
            "model_from_pretrained_kwargs": {"revision": revision} if revision else {},
            "hook_name": cfg.hook,
            "hook_head_index": None,
            "context_size": context_size,
            "prepend_bos": prepend_bos,
            "saefeat_model": ours,
            "saefeat_architecture": cfg.architecture,
            "saefeat_activation_set": cfg.activation_set,
        },
    }
    if arch == "topk":
        out |= {"k": cfg.k, "rescale_acts_by_decoder_norm": False}
    path = _new_folder(path)
    save_file(weights, str(path / SAELENS_WEIGHTS))
    (path / "cfg.json").write_text(json.dumps(out, indent=2))
    return path


def import_saelens(path: Path) -> SparseAutoencoder:
    path = Path(path)
    raw = _read_json(path / "cfg.json")
    arch = raw.get("architecture", "standard")
    if arch not in FROM_SAELENS:
        raise SpecError(f"SAELens architecture {arch!r} has no saefeat counterpart; "
                        f"known: {sorted(FROM_SAELENS)}", field="architecture")  # fmt: skip
    if raw.get("normalize_activations", "none") != "none":
        raise SpecError(
            f"normalize_activations={raw['normalize_activations']!r} scales inputs at run time "
            "with a factor the file does not hold; only 'none' can be imported",
            field="normalize_activations",
        )
    if raw.get("rescale_acts_by_decoder_norm"):
        raise SpecError("rescale_acts_by_decoder_norm=true is not supported",
                        field="rescale_acts_by_decoder_norm")  # fmt: skip
    meta = raw.get("metadata") or {}
    ours = FROM_SAELENS[arch]
    # our own export names the model as saefeat loaded it (the alias), others the hub id
    model = meta.get("saefeat_model") or meta.get("model_name", raw.get("model_name"))
    cfg = SAEConfig(d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), architecture=ours,
                    k=int(raw["k"]) if ours == "topk" else None, model=model,
                    hook=meta.get("hook_name", raw.get("hook_name")))  # fmt: skip
    w = {k: v.float() for k, v in load_file(str(path / SAELENS_WEIGHTS)).items()}
    if "log_threshold" in w:  # older SAELens JumpReLU training checkpoints
        w["threshold"] = w.pop("log_threshold").exp()
    if not raw.get("apply_b_dec_to_input", True):
        # relu(x W + b) == relu((x - b_dec) W + b + b_dec W): move b_dec into b_enc.
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    sae = sae_class(ours)(cfg)
    sae.load_state_dict({k: w[k] for k in sae.state_dict()})
    return sae.eval()


# ---- sparsify -----------------------------------------------------------------------


def export_sparsify(sae: SparseAutoencoder, path: Path) -> Path:
    """Write a TopK SAE, or a TopK transcoder (`transcode`, with W_skip if it has one),
    as sparsify's folder."""
    cfg = sae.cfg
    if cfg.architecture != "topk":
        raise SpecError(f"sparsify holds TopK SAEs only, not {cfg.architecture!r}",
                        field="architecture")  # fmt: skip
    if cfg.out_dim != cfg.d_in:
        raise SpecError(f"sparsify's transcoders write as wide as they read (d_in={cfg.d_in}); "
                        f"this one writes d_out={cfg.out_dim}", field="d_out")  # fmt: skip
    w = _weights(sae)
    tensors = {"encoder.weight": w["W_enc"].t().contiguous(), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}  # fmt: skip
    if "W_skip" in w:
        tensors["W_skip"] = w["W_skip"]
    out = {
        "activation": "topk",
        "expansion_factor": max(1, cfg.d_sae // cfg.d_in),
        "normalize_decoder": True,
        "num_latents": cfg.d_sae,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": cfg.skip_connection,
        "transcode": cfg.is_transcoder,
        "d_in": cfg.d_in,
        "saefeat_model": cfg.model,  # sparsify drops keys it does not know
        "saefeat_hook": cfg.hook,
    }
    if cfg.is_transcoder:
        out["saefeat_hook_out"] = cfg.hook_out
    path = _new_folder(path)
    save_file(tensors, str(path / SPARSIFY_WEIGHTS), metadata={"format": "pt"})
    (path / "cfg.json").write_text(json.dumps(out))
    return path


def import_sparsify(path: Path, *, model: str | None = None, hook: str | None = None,
                    hook_out: str | None = None) -> SparseAutoencoder:  # fmt: skip
    """sparsify's files name neither model nor hook (the folder is the hookpoint): pass
    them, or they come from our export's keys, the folder name (`sparsify_hook`, a
    transcoder's `sparsify_transcoder_hooks`) and the run folder's config.json (sparsify's
    trainer writes its `model` there). `hook_out` is a transcoder's only."""
    path = Path(path)
    raw = _read_json(path / "cfg.json")
    if raw.get("activation", "topk") != "topk":
        raise SpecError(f"sparsify activation {raw['activation']!r} is not supported; only "
                        "topk", field="activation")  # fmt: skip
    transcode = bool(raw.get("transcode"))
    if raw.get("skip_connection") and not transcode:
        raise SpecError("sparsify skip_connection=true on an SAE (transcode=false) has no "
                        "saefeat counterpart", field="skip_connection")  # fmt: skip
    if hook_out and not transcode:
        raise SpecError(f"{path} is an SAE (transcode=false), not a transcoder: it has no "
                        "output hook", field="hook_out")  # fmt: skip
    w = {k: v.float() for k, v in load_file(str(path / SPARSIFY_WEIGHTS)).items()}
    d_sae, d_in = w["encoder.weight"].shape
    hookpoint = path.resolve().name
    if transcode:
        named = sparsify_transcoder_hooks(hookpoint) or (None, None)
        hook = hook or raw.get("saefeat_hook") or named[0]
        hook_out = hook_out or raw.get("saefeat_hook_out") or named[1]
        if not hook_out:
            raise SpecError(f"{path} is a sparsify transcoder of {hookpoint!r}, whose output "
                            "hook saefeat cannot name; pass it (e.g. blocks.6.hook_mlp_out) "
                            "with the input hook", field="hook_out")  # fmt: skip
    else:
        hook = hook or raw.get("saefeat_hook") or sparsify_hook(hookpoint)
    model = model or raw.get("saefeat_model") or _sparsify_run_model(path.resolve().parent)
    d_out = w["W_dec"].shape[1]
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=int(raw["k"]), model=model,
                    hook=hook, hook_out=hook_out if transcode else None,
                    d_out=d_out if d_out != d_in else None,
                    skip_connection=transcode and "W_skip" in w)  # fmt: skip
    sae = sae_class("topk")(cfg)
    ours = {"W_enc": w["encoder.weight"].t().contiguous(), "b_enc": w["encoder.bias"],
            "W_dec": w["W_dec"], "b_dec": w["b_dec"]}  # fmt: skip
    if cfg.skip_connection:
        ours["W_skip"] = w["W_skip"]
    sae.load_state_dict(ours)
    return sae.eval()


# sparsify's hookpoints are module names: `layers.6` (a block's output), `layers.6.mlp`,
# `layers.6.self_attn`; GPT-2 style models name blocks `h.6`.
_SPARSIFY_HOOK = re.compile(
    r"^(?:.*\.)?(?:layers|h|blocks)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?$"
)
_SPARSIFY_KIND = {None: "resid_post", "mlp": "mlp_out", "self_attn": "attn_out",
                  "attn": "attn_out", "attention": "attn_out"}  # fmt: skip


def sparsify_hook(hookpoint: str) -> str | None:
    """Our hook name for a sparsify hookpoint (its SAE's folder name); None if unknown."""
    m = _SPARSIFY_HOOK.match(hookpoint)
    return f"blocks.{m.group(1)}.hook_{_SPARSIFY_KIND[m.group(2)]}" if m else None


def sparsify_transcoder_hooks(hookpoint: str) -> tuple[str, str] | None:
    """Our (input, output) hooks for a sparsify transcoder's hookpoint, the module it
    replaces: an MLP (`layers.6.mlp`) reads its norm's output and writes hook_mlp_out.
    None for any other module (its hooks are not a transcoder pair saefeat names)."""
    m = _SPARSIFY_HOOK.match(hookpoint)
    if not m or m.group(2) != "mlp":
        return None
    return f"blocks.{m.group(1)}.ln2.hook_normalized", f"blocks.{m.group(1)}.hook_mlp_out"


def _sparsify_run_model(run: Path) -> str | None:
    try:
        model = json.loads((run / "config.json").read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    return model if isinstance(model, str) and model else None


# ---- with the catalog: what `saefeat export` and `saefeat import` run -----------------


@dataclass(frozen=True)
class Provenance:
    """Where a stored SAE's activations came from, as its activation set records it."""

    model_name: str | None  # the name saefeat loads the model by (may be our alias)
    revision: str | None
    context_size: int | None
    prepend_bos: bool = True


def provenance(settings: Settings, sae: SparseAutoencoder, sae_id: str) -> Provenance:
    """The model, revision and context size of the SAE's activation set: from the Zarr
    set when it is here (the catalog is not opened), else the set's catalog row (BOS at
    each context start, the harvest default), else the checkpoint's model alone."""
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.models import SAE
    from saefeat.storage.catalog.set_registry import set_origin

    if (found := _zarr_provenance(settings, sae.cfg.activation_set)) is not None:
        return found
    with catalog_session(settings) as s:
        row = s.get(SAE, sae_id)
        set_id = sae.cfg.activation_set or (row.activation_set_id if row is not None else None)
        origin = set_origin(s, set_id)
        model = sae.cfg.model or (row.model_name if row is not None else None)
    if origin is not None:
        return Provenance(origin.model_name, origin.revision, origin.ctx_len)
    return _zarr_provenance(settings, set_id) or Provenance(model, None, None)


def _n_layers(model: str | None) -> int | None:
    """The model's layer count from its config (None when it cannot be read here)."""
    if model is None:
        return None
    from saefeat.lm import model_config_and_tokenizer

    try:
        return getattr(model_config_and_tokenizer(model)[0], "num_hidden_layers", None)
    except SpecError:
        return None


def _zarr_provenance(settings: Settings, set_id: str | None) -> Provenance | None:
    if set_id is None:
        return None
    from saefeat.storage.activations import open_set

    try:
        aset = open_set(settings.activations_dir, set_id)
    except (NotFoundError, OSError, KeyError, ValueError):
        return None  # harvested elsewhere or deleted
    return Provenance(aset.model_name, aset.revision, aset.ctx_len,
                      aset.spec.get("bos", "context") == "context")  # fmt: skip


def export_stored(settings: Settings, sae_id: str, to: str, out: Path) -> Path:
    """Write the stored SAE `sae_id` in SAELens's or sparsify's layout; to circuit-tracer,
    `sae_id` is the transcoders' ids, comma-separated, one for each layer from 0."""
    from saefeat.paths import inside

    if to not in FORMATS:
        raise SpecError(f"{to!r} is not a format; use one of {sorted(FORMATS)}", field="to")
    if to == "circuit-tracer":
        from saefeat.sae.circuit_tracer import export_circuit_tracer

        ids = [i.strip() for i in sae_id.split(",") if i.strip()]
        saes = [load_sae(inside(settings.saes_dir, i, "sae")) for i in ids]
        found = (provenance(settings, sae, i) for sae, i in zip(saes, ids, strict=True))
        models = {p.model_name for p in found} - {None}
        if len(models) > 1:
            raise SpecError(f"the transcoders' activations come from different models "
                            f"({sorted(models)})", field="sae")  # fmt: skip
        model = models.pop() if models else None
        return export_circuit_tracer(saes, Path(out), model_name=model,
                                     names=[f"SAE {i!r}" for i in ids],
                                     n_layers=_n_layers(model))  # fmt: skip
    # `out` is the user's own choice; the SAE is read only from the SAE folder.
    sae = load_sae(inside(settings.saes_dir, sae_id, "sae"))
    if sae.cfg.is_crosscoder:  # their layouts hold one hook of one model
        raise SpecError(f"a crosscoder spans {len(sae.cfg.sources)} sources; {to}'s layout "
                        "holds one hook of one model (export it --to neuronpedia)",
                        field="sae")  # fmt: skip
    if to == "sparsify":
        return export_sparsify(sae, Path(out))
    p = provenance(settings, sae, sae_id)
    return export_saelens(sae, Path(out), model_name=p.model_name, context_size=p.context_size,
                          revision=p.revision, prepend_bos=p.prepend_bos)  # fmt: skip


def read_foreign(folder: Path, *, model: str | None = None, hook: str | None = None,
                 hook_out: str | None = None) -> tuple[str, SparseAutoencoder]:  # fmt: skip
    """(format, SAE) of an SAELens or sparsify folder; `model`/`hook` override its own, and
    `hook_out` a sparsify transcoder's."""
    folder = Path(folder)
    if (folder / SAELENS_WEIGHTS).is_file():
        if hook_out:
            raise SpecError(f"{folder} is an SAELens SAE; only a transcoder has an output hook",
                            field="hook_out")  # fmt: skip
        fmt, sae = "saelens", import_saelens(folder)
    elif (folder / SPARSIFY_WEIGHTS).is_file():
        fmt, sae = "sparsify", import_sparsify(folder, model=model, hook=hook, hook_out=hook_out)
    else:
        raise SpecError(f"{folder} holds neither {SAELENS_WEIGHTS} nor {SPARSIFY_WEIGHTS}",
                        field="path")  # fmt: skip
    sae.cfg.model = model or sae.cfg.model
    sae.cfg.hook = hook or sae.cfg.hook
    if not sae.cfg.hook:
        example = "blocks.6.ln2.hook_normalized" if sae.cfg.is_transcoder else (
            "blocks.6.hook_resid_post")  # fmt: skip
        raise SpecError(f"{folder} does not say which hook the SAE reads; pass --hook "
                        f"(e.g. {example})", field="hook")  # fmt: skip
    if sae.cfg.is_transcoder:
        check_transcoder_hooks(sae.cfg.hook, sae.cfg.hook_out)
    else:
        parse_hook(sae.cfg.hook)
    if not sae.cfg.model:
        raise SpecError(f"{folder} does not name the model; pass --model (a hub id or a "
                        "local model folder)", field="model")  # fmt: skip
    return fmt, sae


def import_stored(
    settings: Settings,
    folder: Path,
    sae_id: str,
    *,
    model: str | None = None,
    hook: str | None = None,
    name: str | None = None,
    hook_out: str | None = None,
) -> Path:
    """Save an SAELens or sparsify SAE (or sparsify transcoder) as checkpoint `sae_id` and
    register it in the catalog (no activation set: index it over one with `saefeat
    index`). Refuses an id already stored or registered."""
    from saefeat.paths import inside
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.models import SAE
    from saefeat.storage.catalog.registry import register_sae

    dest = inside(settings.saes_dir, sae_id, "id")  # before reading anything
    fmt, sae = read_foreign(Path(folder), model=model, hook=hook, hook_out=hook_out)
    cfg = sae.cfg
    with catalog_session(settings) as s:
        if s.get(SAE, sae_id) is not None:
            raise SpecError(f"SAE {sae_id!r} exists; import under a new id", field="id")
        out = sae.save(dest)
        k = f"-k{cfg.k}" if cfg.k is not None else ""
        source: dict[str, Any] = {"format": fmt, "path": str(Path(folder).resolve())}
        transcoder = {"hook_out": cfg.hook_out, "d_out": cfg.d_out,
                      "skip_connection": cfg.skip_connection}  # fmt: skip
        try:
            register_sae(
                s, sae_id=sae_id, name=name or f"{cfg.hook} {cfg.architecture}-{cfg.d_sae}{k}",
                model_name=cfg.model or "", hook_name=cfg.hook or "",
                hook_out_name=cfg.hook_out,
                architecture=cfg.architecture, d_in=cfg.d_in, d_sae=cfg.d_sae, k=cfg.k,
                cfg={"imported_from": source, "extra": cfg.extra,
                     **(transcoder if cfg.is_transcoder else {})},
                checkpoint_path=str(out),
            )  # fmt: skip
            s.commit()
        except BaseException:
            import shutil

            s.rollback()
            shutil.rmtree(out, ignore_errors=True)  # no checkpoint the catalog does not list
            raise
    return out
