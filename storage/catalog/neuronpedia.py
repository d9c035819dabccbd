"""An SAE's catalog in Neuronpedia's export layout, out and back in.

The layout is what Neuronpedia's own exporter writes
(hijohnnylin/neuronpedia utils/neuronpedia-utils/neuronpedia_utils/export-data.py and
convert-saedashboard-to-neuronpedia-export.py), one folder per source (= one SAE):

    <out>/<modelId>/<sourceId>/
        model.jsonl  release.jsonl  sourceset.jsonl  source.jsonl   one record each
        features/batch-N.jsonl.gz       Neuron rows, 1024 features a batch, by index
        activations/batch-N.jsonl.gz    Activation rows of the same features
        explanations/batch-N.jsonl.gz   Explanation rows (our labels)
        saefeat/batch-N.jsonl.gz        what Neuronpedia has no column for (below)

Record fields are exactly the exporter's column lists. `sourceId` is
`<layer>-<sourceSetName>`, as Neuronpedia names sources. Top examples are Activation rows
with binMin = binContains = -1 (Neuronpedia's mark for "top"); quantile samples carry
their slice of (0, max] in binMin/binMax. Neuronpedia's importer reads only the files
it knows, so the `saefeat/` side files (token ids, context positions, example kinds and
ranks, mean activation, the exact histogram, projection token ids, the measured and
de-biased token effects, label source, score and time) ride along unseen and make our
own round trip exact. A folder from Neuronpedia has none: import (neuronpedia_import.py)
then falls back to what its records hold.

A transcoder (reads the MLP's input, writes its output: `SAE.hook_out_name`) is a source
set named `saefeat-transcoder-<d_sae>` (Neuronpedia names its transcoder sets so:
`gemmascope-transcoder-16k`), described as one with both hooks; its saelensConfig names
the hook it reads (`hook_name`) and the one it writes as SAELens's TranscoderConfig
does (`hook_name_out`, `hook_layer_out`, `d_out`), and our `saefeat` record keeps
`hook_out`, which import registers again.

A crosscoder (cfg `sources`: the same hook of two models, or layers of one) is a source
set named `saefeat-crosscoder-<d_sae>`, at its first source's layer and hook, described
with every source; the model record is its first source's (`dimension` that source's
width, while saelensConfig's d_in is the concatenation's). Its `saefeat` record names
the sources, and each feature's side record its decoder norm per source, relative norm
and class (features.decoder_norms/relative_norm/sharing), which Neuronpedia has no
column for.

The map (features.umap_x/umap_y, features/umap_map.py) goes where Neuronpedia keeps it:
the `umap_x`/`umap_y` of each Explanation row (source.hasUmap says there is one); a
feature without a label has no Explanation row, so the side records carry every
feature's coordinates too. Import reads the side record, else a Neuron row's
`umap_x`/`umap_y` (a column of Neuronpedia's Neuron table its exporter leaves out), else
the feature's Explanation rows.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.features.records import FeatureExample
from saefeat.shapes import hub_model_id, is_instruct_model, parse_hook
from saefeat.storage.catalog import feature_reads, queries
from saefeat.storage.catalog.models import (
    SAE,
    ActivationSetRow,
    Feature,
    Label,
)

BATCH = 1024  # features per batch file, as Neuronpedia's exporter
# The creator Neuronpedia's converter falls back to; its exporter writes one id for all.
CREATOR_ID = "clkht01d40000jv08hvalcvly"
# Neuronpedia's words for a source set's hook; saefeat's own for the MLP's input (the
# residual its norm reads, TL's resid_mid, and that norm's output).
HOOK_SETS = {"resid_post": "res", "resid_pre": "res-pre", "mlp_out": "mlp", "attn_out": "att",
             "mlp_in": "res-mid", "ln2_normalized": "ln2"}  # fmt: skip
TRANSCODER_SET = "transcoder"
CROSSCODER_SET = "crosscoder"

# Column lists of Neuronpedia's export-data.py, in its order.
NEURON_FIELDS = (
    "modelId", "layer", "index", "maxActApprox", "creatorId", "frac_nonzero",
    "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "neuron_alignment_indices", "neuron_alignment_l1",
    "neuron_alignment_values", "correlated_neurons_indices", "correlated_neurons_l1",
    "correlated_neurons_pearson", "decoder_weights_dist", "neg_str", "neg_values", "pos_str",
    "pos_values", "sourceSetName", "topkCosSimIndices", "topkCosSimValues", "vector",
    "vectorLabel", "hookName", "vectorDefaultSteerStrength", "hasVector",
)  # fmt: skip
ACTIVATION_FIELDS = (
    "id", "modelId", "layer", "index", "creatorId", "dataSource", "tokens", "maxValue",
    "minValue", "values", "maxValueTokenIndex", "dfaValues", "dfaMaxValue", "dfaTargetIndex",
    "binContains", "binMin", "binMax",
)  # fmt: skip
EXPLANATION_FIELDS = (
    "id", "modelId", "layer", "index", "authorId", "description", "embedding", "typeName",
    "explanationModelName", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity",
)  # fmt: skip
N_QUANTILE_SLICES = 10  # saefeat.features.quantiles: equal slices of (0, max]
# An example's fields that an Activation row has no column for: its side record carries
# them (the feature's index, the tokens and the values are the Activation's own).
ACTIVATION_HOLDS = ("feature_index", "token_strs", "values")
EXAMPLE_SIDE_FIELDS = tuple(
    f.name for f in fields(FeatureExample) if f.name not in ACTIVATION_HOLDS
)


def slug(text: str) -> str:
    """Neuronpedia ids: letters, digits, '-' and '_' only, lower case."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "model"


@dataclass(frozen=True)
class SourceNames:
    model_id: str
    set_name: str
    source_id: str


def model_slug(model_name: str) -> str:
    """Neuronpedia's model id: the last part of the hub id, as its own ids drop the
    organisation (`gemma-2-2b`): `smollm2-135m` (our alias) -> `smollm2-135m-instruct`."""
    return slug(hub_model_id(model_name).rstrip("/").rsplit("/", 1)[-1])


def _sources(sae: SAE) -> list[dict[str, Any]]:
    """A crosscoder's sources (its cfg's); [] for an SAE or a transcoder."""
    sources = (sae.cfg or {}).get("sources")
    return list(sources) if isinstance(sources, list) and len(sources) >= 2 else []


def source_names(sae: SAE) -> SourceNames:
    point = parse_hook(sae.hook_name)
    kind = TRANSCODER_SET if sae.hook_out_name else HOOK_SETS[point.kind]
    if _sources(sae):
        kind = CROSSCODER_SET
    set_name = f"saefeat-{kind}-{sae.d_sae}"
    return SourceNames(model_slug(sae.model_name), set_name, f"{point.layer}-{set_name}")


# ---- export --------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]], *, gz: bool) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data, compresslevel=5) if gz else data)


def _iso(t: datetime | None) -> str:
    return (t or datetime.now(UTC)).isoformat()


def _meta_records(session: Session, sae: SAE, names: SourceNames) -> dict[str, dict]:
    """The model, release, source set and source records. The model is named by its hub
    id (`shapes.hub_model_id`: our embedded alias stands for
    HuggingFaceTB/SmolLM2-135M-Instruct), and `instruct` is `shapes.is_instruct_model`:
    true when a part of the hub id's last segment is instruct, it, chat, sft, dpo or rlhf
    (SmolLM2-135M-Instruct, gemma-2-2b-it, Llama-2-7b-chat-hf)."""
    aset = session.get(ActivationSetRow, sae.activation_set_id) if sae.activation_set_id else None
    n_layers = aset.model.n_layers if aset is not None else 0
    created = _iso(sae.created_at)
    point = parse_hook(sae.hook_name)
    release = f"saefeat-{names.model_id}"
    hub_id = hub_model_id(sae.model_name)
    revision = aset.model.revision if aset is not None else None
    sources = _sources(sae)
    # The model's width: a crosscoder's d_in is its sources' widths together.
    dimension = int(sources[0]["width"]) if sources else sae.d_in
    saelens_cfg = {
        "architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "hook_name": sae.hook_name, "hook_layer": point.layer, "model_name": hub_id,
        "model_from_pretrained_kwargs": {"revision": revision} if revision else {},
        "k": sae.k, "context_size": aset.ctx_len if aset is not None else None,
        "saefeat": {"sae_id": sae.id, "name": sae.name, "cfg": sae.cfg, "metrics": sae.metrics,
                    "activation_set_id": sae.activation_set_id, "model_name": sae.model_name,
                    "hook_out": sae.hook_out_name},
    }  # fmt: skip
    if sources:
        saelens_cfg["saefeat"] |= {"kind": "crosscoder", "sources": sources}
    if sae.hook_out_name:  # as SAELens's TranscoderConfig names the hook it writes
        # The MLP's output is as wide as the input it reads (both d_model).
        saelens_cfg |= {"hook_name_out": sae.hook_out_name, "d_out": sae.d_in,
                        "hook_layer_out": parse_hook(sae.hook_out_name).layer}  # fmt: skip
    return {
        "model.jsonl": {
            "id": names.model_id, "instruct": is_instruct_model(sae.model_name),
            "creatorId": CREATOR_ID, "displayNameShort": hub_id.rsplit("/", 1)[-1],
            "displayName": hub_id, "tlensId": None, "dimension": dimension,
            "visibility": "PUBLIC", "defaultSourceSetName": names.set_name,
            "defaultSourceId": names.source_id, "inferenceEnabled": False, "layers": n_layers,
            "neuronsPerLayer": sae.d_sae, "createdAt": created, "owner": "saefeat",
            "updatedAt": created, "website": None,
        },
        "release.jsonl": {
            "name": release, "description": f"saefeat SAEs on {hub_id}",
            "creatorName": "saefeat", "creatorId": CREATOR_ID, "visibility": "PUBLIC",
            "isNewUi": False, "featured": False, "descriptionShort": f"saefeat {sae.name}",
            "urls": [], "creatorEmail": None, "creatorNameShort": "saefeat",
            "defaultSourceSetName": names.set_name, "defaultSourceId": names.source_id,
            "defaultUmapSourceIds": [], "createdAt": created,
        },
        "sourceset.jsonl": {
            "modelId": names.model_id, "name": names.set_name, "creatorId": CREATOR_ID,
            "hasDashboards": True, "visibility": "PUBLIC",
            "description": _set_description(sae, point.kind), "type": "",
            "creatorName": "saefeat", "urls": [], "creatorEmail": None, "releaseName": release,
            "defaultOfModelId": None, "defaultRange": 1, "defaultShowBreaks": True,
            "showDfa": False, "showCorrelated": False, "showHeadAttribution": False,
            "showUmap": False, "createdAt": created,
        },
        "source.jsonl": {
            "id": names.source_id, "modelId": names.model_id, "setName": names.set_name,
            "creatorId": CREATOR_ID, "hasDashboards": True, "inferenceEnabled": False,
            "inferenceHosts": [], "saelensConfig": saelens_cfg, "saelensRelease": None,
            "saelensSaeId": None, "hfRepoId": None, "hfFolderId": None, "visibility": "PUBLIC",
            "defaultOfModelId": None, "hasUmap": _has_umap(session, sae.id),
            "hasUmapLogSparsity": False,
            "hasUmapClusters": False, "num_prompts": aset.n_contexts if aset else None,
            "num_tokens_in_prompt": aset.ctx_len if aset else None,
            "dataset": sae.activation_set_id, "notes": f"saefeat SAE {sae.id}",
            "createdAt": created,
        },
    }  # fmt: skip


def _set_description(sae: SAE, kind: str) -> str:
    """The source set's description: the hook type, a transcoder's two hooks, or a
    crosscoder's sources."""
    if sources := _sources(sae):
        named = ", ".join(f"{s.get('model')} {s.get('hook')}" for s in sources)
        return f"crosscoder of {named} - {sae.d_sae} ({sae.architecture})"
    if sae.hook_out_name:
        return (f"transcoder {sae.hook_name} -> {sae.hook_out_name} - {sae.d_sae} "
                f"({sae.architecture})")  # fmt: skip
    return f"{kind} - {sae.d_sae} ({sae.architecture})"


def _has_umap(session: Session, sae_id: str) -> bool:
    """Whether the SAE's features have map coordinates (Neuronpedia keeps them on each
    Explanation row, `umap_x`/`umap_y`; our side records carry every feature's)."""
    placed = (Feature.sae_id == sae_id) & Feature.umap_x.is_not(None)
    return session.scalar(select(Feature.id).where(placed).limit(1)) is not None


def _histogram_bars(histogram: dict | None) -> tuple[list[float], list[float]]:
    """(heights, bar centres): Neuronpedia draws bars at values; ours are log-spaced bins,
    so a bar sits at its bin's geometric centre."""
    if not histogram:
        return [], []
    edges = histogram["edges"]
    centres = [
        math.sqrt(a * b) if a > 0 else (a + b) / 2
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    return [float(c) for c in histogram["counts"]], centres


def _logit_bars(logits: dict | None) -> dict[str, list[float]]:
    """Neuronpedia's logit histogram (heights at bin centres) from the stored one
    (features/logit_histogram.py): equal-width bins from min to max."""
    if not logits or not logits.get("counts"):
        return {"logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": []}
    counts, lo, hi = logits["counts"], logits["min"], logits["max"]
    width = (hi - lo) / len(counts)
    centres = [lo + (i + 0.5) * width for i in range(len(counts))]
    return {"logits_hist_data_bar_heights": [float(c) for c in counts],
            "logits_hist_data_bar_values": centres}  # fmt: skip


def _quantile_bin(activation: float, max_act: float) -> tuple[float, float]:
    width = max_act / N_QUANTILE_SLICES if max_act > 0 else 0.0
    if width == 0:
        return 0.0, max_act
    k = min(max(math.ceil(activation / width) - 1, 0), N_QUANTILE_SLICES - 1)
    return k * width, (k + 1) * width


def export_neuronpedia(session: Session, sae_id: str, out: Path,
                       progress: Callable[[int, int], None] | None = None) -> Path:  # fmt: skip
    """Write SAE `sae_id`'s catalog under `out/<modelId>/<sourceId>/`; returns that folder.
    `progress(features written, features)` after each batch.

    Refuses a folder that exists, so two SAEs never overwrite each other's files."""
    sae = queries.get_sae(session, sae_id)
    if queries.count_features(session, sae_id) == 0:
        raise SpecError("has not been indexed; nothing to export", field="sae")
    names = source_names(sae)
    folder = Path(out) / names.model_id / names.source_id
    if folder.exists():
        raise SpecError(f"{folder} exists; choose an empty --out", field="out")
    try:
        folder.mkdir(parents=True)
    except OSError as e:  # a file on the path, no permission
        raise SpecError(f"cannot create {folder}: {e.strerror}", field="out") from None
    for name, record in _meta_records(session, sae, names).items():
        _write_jsonl(folder / name, [record], gz=False)
    for sub in ("features", "activations", "explanations", "saefeat"):
        (folder / sub).mkdir()
    ids = [fid for (fid,) in session.execute(
        select(Feature.id).where(Feature.sae_id == sae_id).order_by(Feature.index))]  # fmt: skip
    explanations: list[dict[str, Any]] = []
    for batch, start in enumerate(range(0, len(ids), BATCH)):
        rows = _export_batch(session, ids[start : start + BATCH], names)
        explanations += rows.pop("explanations")
        for sub, records in rows.items():
            _write_jsonl(folder / sub / f"batch-{batch}.jsonl.gz", records, gz=True)
        if progress:
            progress(min(start + BATCH, len(ids)), len(ids))
    # The exporter batches explanations by their own count: no labels, no files.
    for batch, start in enumerate(range(0, len(explanations), BATCH)):
        records = explanations[start : start + BATCH]
        _write_jsonl(folder / "explanations" / f"batch-{batch}.jsonl.gz", records, gz=True)
    return folder


def _export_batch(session: Session, ids: list[int], names: SourceNames) -> dict[str, list]:
    out: dict[str, list] = {"features": [], "activations": [], "explanations": [], "saefeat": []}
    common = {"modelId": names.model_id, "layer": names.source_id}
    # Activation and Explanation ids are primary keys across a whole Neuronpedia.
    prefix = f"sf-{names.model_id}-{names.source_id}"
    # The whole batch's rows in one query per table, not four per feature. Row reads, not
    # the page's JSON document: SQLite's JSON prints 15 digits.
    features = {f.id: f for f in session.scalars(select(Feature).where(Feature.id.in_(ids)))}
    examples_by_feature = feature_reads.feature_examples_many(session, ids)
    projections = feature_reads.feature_projection_many(session, ids)
    neighbours = feature_reads.feature_neighbours_many(session, ids)
    effects = feature_reads.feature_effects_many(session, ids)
    labels_by_feature: dict[int, list[Label]] = defaultdict(list)
    for label in session.scalars(select(Label).where(Label.feature_id.in_(ids)).order_by(Label.id)):
        labels_by_feature[label.feature_id].append(label)
    for fid in ids:
        f = features[fid]
        examples = examples_by_feature[fid]
        top, bottom = projections[fid]["top"], projections[fid]["bottom"]
        near = neighbours[fid]
        heights, centres = _histogram_bars(f.histogram)
        index = str(f.index)
        out["features"].append({
            **common, "index": index, "maxActApprox": f.max_activation, "creatorId": CREATOR_ID,
            "frac_nonzero": f.density, "freq_hist_data_bar_heights": heights,
            "freq_hist_data_bar_values": centres,
            **_logit_bars((f.histogram or {}).get("logits")), "neuron_alignment_indices": [],
            "neuron_alignment_l1": [], "neuron_alignment_values": [],
            "correlated_neurons_indices": [], "correlated_neurons_l1": [],
            "correlated_neurons_pearson": [], "decoder_weights_dist": [],
            "neg_str": [t.token_str for t in bottom], "neg_values": [t.value for t in bottom],
            "pos_str": [t.token_str for t in top], "pos_values": [t.value for t in top],
            "sourceSetName": names.set_name, "topkCosSimIndices": [n.feature.index for n in near],
            "topkCosSimValues": [n.cosine for n in near], "vector": [], "vectorLabel": None,
            "hookName": None, "vectorDefaultSteerStrength": None, "hasVector": False,
        })  # fmt: skip
        side = []
        for ex in examples:
            act_id = f"{prefix}-{index}-{ex.kind}-{ex.rank}"
            values = ex.values
            peak = max(range(len(values)), key=values.__getitem__) if values else 0
            if ex.kind == "top":
                bins = (-1.0, f.max_activation, -1.0)
            else:
                lo, hi = _quantile_bin(ex.activation, f.max_activation)
                bins = (lo, hi, None)
            out["activations"].append({
                "id": act_id, **common, "index": index, "creatorId": CREATOR_ID,
                "dataSource": None, "tokens": ex.token_strs,
                "maxValue": max(values, default=0.0), "minValue": min(values, default=0.0),
                "values": values, "maxValueTokenIndex": peak, "dfaValues": [],
                "dfaMaxValue": None, "dfaTargetIndex": None, "binContains": bins[2],
                "binMin": bins[0], "binMax": bins[1],
            })  # fmt: skip
            side.append({"id": act_id, **{k: getattr(ex, k) for k in EXAMPLE_SIDE_FIELDS}})
        labels = []
        for lb in labels_by_feature[fid]:
            lid = f"{prefix}-{index}-label-{lb.id}"
            out["explanations"].append({
                "id": lid, **common, "index": index, "authorId": CREATOR_ID,
                "description": lb.text, "embedding": None, "typeName": None,
                "explanationModelName": None, "umap_x": f.umap_x, "umap_y": f.umap_y,
                "umap_cluster": None, "umap_log_feature_sparsity": None,
            })  # fmt: skip
            labels.append({"id": lid, "source": lb.source, "author": lb.author,
                           "score": lb.score, "created_at": _iso(lb.created_at)})  # fmt: skip
        out["saefeat"].append({
            "index": f.index, "mean_activation": f.mean_activation, "histogram": f.histogram,
            "pos_ids": [t.token_id for t in top], "neg_ids": [t.token_id for t in bottom],
            "examples": side, "labels": labels, "umap_x": f.umap_x, "umap_y": f.umap_y,
            "effects": _effects_record(effects.get(fid)),
            **_crosscoder_record(f),
        })  # fmt: skip
    return out


def _crosscoder_record(f: Feature) -> dict[str, Any]:
    """A crosscoder feature's decoder norm per source, relative norm and class for its
    side record; nothing for an SAE's or a transcoder's feature."""
    if f.decoder_norms is None:
        return {}
    return {"decoder_norms": f.decoder_norms, "relative_norm": f.relative_norm,
            "sharing": f.sharing}  # fmt: skip


def _effects_record(effects: feature_reads.Effects | None) -> dict:
    """A feature's token effects (features/effects.py) for its side record, which
    Neuronpedia has no field for: {method: {side: [[token_id, token_str, value], ...]}}
    by rank; methods with no entries are left out."""
    out = {}
    for method, sides in (effects or {}).items():
        if any(sides.values()):
            out[method] = {side: [[e.token_id, e.token_str, e.value] for e in entries]
                           for side, entries in sides.items()}  # fmt: skip
    return out
