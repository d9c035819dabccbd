"""Reading a Neuronpedia export folder into the catalog (the layout is described in
saefeat.storage.catalog.neuronpedia, which writes it).

Every record is checked before the first write. A folder Neuronpedia itself exported has
none of our `saefeat/` side files: its records then give what they hold, and what they
do not (token ids, the context an example came from) is -1; the mean activation comes
from the histogram bars.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.features.records import FeatureExample, FeatureIndex, TokenEffects, VocabProjection
from saefeat.storage.catalog.labels import MAX_LABEL_CHARS
from saefeat.storage.catalog.models import (
    EFFECT_METHODS,
    EFFECT_SIDES,
    LABEL_SOURCES,
    SAE,
    Feature,
    Label,
)
from saefeat.storage.catalog.neuronpedia import EXAMPLE_SIDE_FIELDS
from saefeat.storage.catalog.registry import register_sae
from saefeat.storage.catalog.writer import write_feature_index


def is_neuronpedia_folder(path: Path) -> bool:
    return _find_source(Path(path), strict=False) is not None


def _find_source(path: Path, *, strict: bool = True) -> Path | None:
    """The source folder: `path` itself, or the one `<model>/<source>/` (or `<source>/`)
    below it that holds source.jsonl and features/."""
    candidates = [path, *sorted(path.glob("*")), *sorted(path.glob("*/*"))]
    found = [p for p in candidates if (p / "source.jsonl").is_file() and (p / "features").is_dir()]
    if len(found) == 1 or (found and found[0] == path):
        return found[0]
    if strict:
        why = "holds several sources; name one" if found else "holds no source.jsonl + features/"
        raise SpecError(f"{path} {why}", field="path")
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        rows = []
        for n, line in enumerate(raw.decode().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("a line is not a JSON object")
                rows.append(row)
                row["_where"] = f"{path.parent.name}/{path.name}:{n}"
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as e:
        raise SpecError(f"{path} cannot be read: {e}", field="path") from None
    return rows


def _batches(folder: Path, sub: str) -> list[dict[str, Any]]:
    files = sorted((folder / sub).glob("batch-*.jsonl.gz"),
                   key=lambda p: int(re.sub(r"\D", "", p.name) or 0))  # fmt: skip
    return [row for f in files for row in _read_jsonl(f)]


def _field(row: dict, name: str, kind: type | tuple[type, ...], *, optional: bool = False):
    value = row.get(name)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise SpecError(f"{row['_where']}: {name} is {value!r}", field=name)
    return value


def _feature_index(row: dict, d_sae: int | None = None) -> int:
    raw = row.get("index")
    try:
        i = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(f"{row['_where']}: index is {raw!r}", field="index") from None
    if i < 0 or (d_sae is not None and i >= d_sae):
        raise SpecError(f"{row['_where']}: index {i} is outside 0..{(d_sae or 1) - 1}",
                        field="index")  # fmt: skip
    return i


@dataclass
class ImportSummary:
    sae_id: str
    n_features: int
    n_examples: int
    n_labels: int


def import_neuronpedia(session: Session, path: Path, sae_id: str) -> ImportSummary:
    """Read a Neuronpedia source folder into the catalog as SAE `sae_id` (features,
    examples, projections, neighbours, labels). Every record is checked before the first
    write; the writes are one commit, and the labels (which need the new feature ids)
    follow in a second that, if it fails, removes the SAE again: nothing half-written."""
    folder = _find_source(Path(path))
    assert folder is not None
    if session.get(SAE, sae_id) is not None:
        raise SpecError(f"SAE {sae_id!r} exists; import under a new id", field="id")
    source = _read_jsonl(folder / "source.jsonl")
    if len(source) != 1:
        raise SpecError(f"{folder}/source.jsonl must hold one record", field="path")
    source_row = source[0]
    source_id = _field(source_row, "id", str)
    cfg = _saelens_config(source_row)
    model_rows = _read_jsonl(folder / "model.jsonl") if (folder / "model.jsonl").is_file() else []
    neurons = _batches(folder, "features")
    if not neurons:
        raise SpecError(f"{folder}/features holds no features", field="path")
    for row in neurons + _batches(folder, "activations") + _batches(folder, "explanations"):
        if row.get("layer") != source_id:
            raise SpecError(f"{row['_where']}: layer is {row.get('layer')!r}, not the source "
                            f"{source_id!r}", field="layer")  # fmt: skip
    d_sae = _count(cfg, "d_sae") or max(_feature_index(r) for r in neurons) + 1
    index = _feature_index_from(folder, neurons, d_sae)
    labels = _labels(folder, d_sae)
    hook = cfg.get("hook_name") or _hook_from_source(source_id)
    d_in = _count(cfg, "d_in") or (_count(model_rows[0], "dimension") if model_rows else None)
    if not d_in:
        raise SpecError("neither saelensConfig.d_in nor model.dimension gives d_in", field="d_in")
    saefeat_meta = cfg.get("saefeat") or {}
    # our export names the hub id for Neuronpedia, and the name saefeat loads it by here
    model_name = (
        saefeat_meta.get("model_name") or cfg.get("model_name") or source_row.get("modelId")
    )
    register_sae(
        session, sae_id=sae_id, name=saefeat_meta.get("name") or f"{model_name} {source_id}",
        model_name=model_name, hook_name=hook, architecture=cfg.get("architecture") or "unknown",
        d_in=d_in, d_sae=d_sae, k=_count(cfg, "k"), cfg=saefeat_meta.get("cfg") or {},
        metrics=saefeat_meta.get("metrics") or {},
    )  # fmt: skip
    summary = write_feature_index(session, sae_id, index)  # commits the SAE with its index
    try:
        ids = dict(session.execute(
            select(Feature.index, Feature.id).where(Feature.sae_id == sae_id)).all())  # fmt: skip
        session.add_all(
            Label(feature_id=ids[i], **{k: v for k, v in fields.items() if v is not None})
            for i, fields in labels
        )
        session.commit()
    except BaseException:
        session.rollback()
        session.delete(session.get(SAE, sae_id))
        session.commit()
        raise
    return ImportSummary(sae_id, summary.n_features, summary.n_examples, len(labels))


def _saelens_config(source_row: dict) -> dict:
    """source.saelensConfig: an object, or (as some exports hold it) a JSON string of one."""
    cfg = source_row.get("saelensConfig") or {}
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            cfg = None
    if not isinstance(cfg, dict):
        raise SpecError("source.jsonl: saelensConfig is not a JSON object", field="saelensConfig")
    return cfg


def _count(record: dict, name: str) -> int | None:
    """A positive integer field, or None where it is absent."""
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{name} is {value!r}, not a positive integer", field=name)
    return value


def _hook_from_source(source_id: str) -> str:
    m = re.match(r"^(\d+)-(.*)$", source_id)
    if not m:
        raise SpecError(f"source id {source_id!r} does not start with a layer", field="layer")
    kinds = {"res": "resid_post", "res-pre": "resid_pre", "mlp": "mlp_out", "att": "attn_out"}
    for word, kind in sorted(kinds.items(), key=lambda kv: -len(kv[0])):
        if re.search(rf"(^|-){word}(-|$)", m.group(2)):
            return f"blocks.{m.group(1)}.hook_{kind}"
    raise SpecError(f"cannot tell the hook from source id {source_id!r}", field="hook")


def _side_rows(folder: Path, d_sae: int) -> dict[int, dict]:
    if not (folder / "saefeat").is_dir():
        return {}
    return {_feature_index(r, d_sae): r for r in _batches(folder, "saefeat")}


def _floats(row: dict, name: str) -> list[float]:
    values = row.get(name) or []
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise SpecError(f"{row['_where']}: {name} must be a list of finite numbers", field=name)
    return [float(v) for v in values]


def _feature_index_from(folder: Path, neurons: list[dict], d_sae: int) -> FeatureIndex:
    side = _side_rows(folder, d_sae)
    density, max_act, mean_act = np.zeros(d_sae), np.zeros(d_sae), np.zeros(d_sae)
    histograms: dict[int, dict] = {}
    projections, near = [], {}
    for row in neurons:
        i = _feature_index(row, d_sae)
        extra = side.get(i, {})
        density[i] = _field(row, "frac_nonzero", float)
        max_act[i] = _field(row, "maxActApprox", float, optional=True) or 0.0
        heights, centres = _floats(row, "freq_hist_data_bar_heights"), _floats(
            row, "freq_hist_data_bar_values")  # fmt: skip
        mean = extra.get("mean_activation")
        if mean is None and sum(heights) > 0:  # Neuronpedia keeps no mean: the histogram's
            mean = float(np.dot(heights, centres) / sum(heights))
        mean_act[i] = mean or 0.0
        if extra.get("histogram"):
            histograms[i] = extra["histogram"]
        pos, neg = row.get("pos_str") or [], row.get("neg_str") or []
        pos_v, neg_v = _floats(row, "pos_values"), _floats(row, "neg_values")
        if len(pos) != len(pos_v) or len(neg) != len(neg_v):
            raise SpecError(f"{row['_where']}: pos/neg strings and values differ in length",
                            field="pos_str")  # fmt: skip
        projections.append(VocabProjection(
            i, extra.get("pos_ids") or [-1] * len(pos), list(pos), pos_v,
            extra.get("neg_ids") or [-1] * len(neg), list(neg), neg_v))  # fmt: skip
        cos_i = row.get("topkCosSimIndices") or []
        if not isinstance(cos_i, list) or not all(
            isinstance(j, int) and not isinstance(j, bool) and 0 <= j < d_sae for j in cos_i
        ):
            raise SpecError(f"{row['_where']}: topkCosSimIndices must be feature indices "
                            f"0..{d_sae - 1}", field="topkCosSimIndices")  # fmt: skip
        near[i] = (list(cos_i), _floats(row, "topkCosSimValues"))
    examples = _examples(folder, d_sae, side, max_act)
    umap = _umap(folder, neurons, side, d_sae)
    effects = [e for i, row in sorted(side.items()) for e in _effects(i, row)]
    width = max((len(a) for a, _ in near.values()), default=0)
    nbr_idx = np.full((d_sae, width), -1, dtype=np.int64)
    nbr_cos = np.zeros((d_sae, width))
    for i, (idx, cos) in near.items():
        nbr_idx[i, : len(idx)] = idx
        nbr_cos[i, : len(cos)] = cos
    edges, counts = _shared_histograms(histograms, d_sae)
    return FeatureIndex(
        d_sae=d_sae, n_tokens=0, density=density, max_activation=max_act,
        mean_activation=mean_act, examples=examples, projections=projections,
        histogram_edges=edges, histograms=counts,
        neighbour_indices=nbr_idx if width else None, neighbour_cosines=nbr_cos if width else None,
        umap=umap, effects=effects,
    )  # fmt: skip


def _effects(i: int, row: dict) -> list[TokenEffects]:
    """A side record's token effects (neuronpedia._effects_record); none in a folder from
    Neuronpedia, which has no field for them."""
    where = f"saefeat side record of feature {i}: effects"
    record = row.get("effects") or {}
    if not isinstance(record, dict) or not set(record) <= set(EFFECT_METHODS):
        raise SpecError(f"{where} must map {'/'.join(EFFECT_METHODS)} to up/down lists",
                        field="effects")  # fmt: skip
    out = []
    for method, sides in record.items():
        if not isinstance(sides, dict) or set(sides) != set(EFFECT_SIDES):
            raise SpecError(f"{where}.{method} must have up and down lists", field="effects")
        cols = {}
        for side in EFFECT_SIDES:
            entries = sides[side]
            if not isinstance(entries, list) or not all(
                isinstance(e, list) and len(e) == 3 and isinstance(e[0], int)
                and not isinstance(e[0], bool) and isinstance(e[1], str)
                and isinstance(e[2], int | float) and not isinstance(e[2], bool)
                and math.isfinite(e[2])
                for e in entries
            ):  # fmt: skip
                raise SpecError(f"{where}.{method}.{side} must be [token_id, token, value] "
                                "entries with a finite value", field="effects")  # fmt: skip
            cols[side] = ([e[0] for e in entries], [e[1] for e in entries],
                          [float(e[2]) for e in entries])  # fmt: skip
        out.append(TokenEffects(i, method, *cols["up"], *cols["down"]))
    return out


def _umap(folder: Path, neurons: list[dict], side: dict[int, dict], d_sae: int):
    """[d_sae, 2] map coordinates (NaN where a feature has none), or None when no record
    holds any: the side record's, else the Neuron row's, else an Explanation row's."""
    xy = np.full((d_sae, 2), np.nan)
    rows = [(_feature_index(r, d_sae), r) for r in _batches(folder, "explanations")]
    rows += [(_feature_index(r, d_sae), r) for r in neurons]
    rows += [(i, {**r, "_where": f"saefeat side record of feature {i}"}) for i, r in side.items()]
    for i, row in rows:  # later sources win: side records last
        x, y = row.get("umap_x"), row.get("umap_y")
        if x is None and y is None:
            continue
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (x, y)):  # fmt: skip
            raise SpecError(f"{row.get('_where', 'a record')}: umap_x/umap_y must be finite "
                            "numbers", field="umap_x")  # fmt: skip
        xy[i] = (float(x), float(y))
    return None if np.isnan(xy).all() else xy


def _shared_histograms(histograms: dict[int, dict], d_sae: int):
    """The catalog keeps one set of bin edges for an SAE; use them when every feature came
    with the same ones (our side files), else store no histograms."""
    if not histograms:
        return None, None
    edges = next(iter(histograms.values()))["edges"]
    if any(h["edges"] != edges for h in histograms.values()):
        return None, None
    counts = np.zeros((d_sae, len(edges) - 1), dtype=np.int64)
    for i, h in histograms.items():
        counts[i] = h["counts"]
    return np.asarray(edges), counts


def _examples(folder: Path, d_sae: int, side: dict[int, dict], max_act: np.ndarray):
    extra = {e["id"]: e for r in side.values() for e in r.get("examples", [])}
    by_feature: dict[tuple[int, str], list] = defaultdict(list)
    for row in _batches(folder, "activations"):
        i = _feature_index(row, d_sae)
        tokens = row.get("tokens")
        values = _floats(row, "values")
        if not isinstance(tokens, list) or len(tokens) != len(values) or not tokens:
            raise SpecError(f"{row['_where']}: tokens and values must be equal, non-empty lists",
                            field="tokens")  # fmt: skip
        e = extra.get(row.get("id"))
        if e is not None:
            ex = _side_example(row, e, i, tokens, values)
        else:
            ex = _example(row, i, tokens, values)
        by_feature[(i, ex.kind)].append(ex)
    out = []
    for _, group in sorted(by_feature.items()):
        if any(ex.rank < 0 for ex in group):  # no side file: rank by activation
            group.sort(key=lambda ex: -ex.activation)
            for rank, ex in enumerate(group):
                ex.rank = rank
        out.extend(group)
    return out


def _side_example(row: dict, e: dict, i: int, tokens: list, values: list[float]):
    """An Activation row completed by its record in our `saefeat/` side file (the record's
    fields but those the Activation holds: neuronpedia.EXAMPLE_SIDE_FIELDS)."""
    try:
        ex = FeatureExample(feature_index=i, token_strs=[str(t) for t in tokens], values=values,
                            **{k: e[k] for k in EXAMPLE_SIDE_FIELDS})  # fmt: skip
        ex.rank, ex.activation, ex.focus = int(ex.rank), float(ex.activation), int(ex.focus)
        ex.context_index, ex.position = int(ex.context_index), int(ex.position)
        ex.token_ids = [int(t) for t in ex.token_ids]
    except (KeyError, TypeError, ValueError):
        ex = None
    if ex is None or len(ex.token_ids) != len(tokens) or ex.kind not in ("top", "quantile"):
        raise SpecError(f"{row['_where']}: its saefeat/ side record {row.get('id')!r} is "
                        "malformed", field="saefeat")  # fmt: skip
    return ex


def _example(row: dict, i: int, tokens: list, values: list[float]) -> FeatureExample:
    """A Neuronpedia Activation without our side file: the focus is its max token, the kind
    comes from binMin (-1 marks top examples), and what Neuronpedia does not keep (token
    ids, the context it came from) is -1."""
    focus = _field(row, "maxValueTokenIndex", int, optional=True) or 0
    focus = min(max(focus, 0), len(values) - 1)
    kind = "top" if row.get("binMin") in (None, -1) else "quantile"
    return FeatureExample(
        feature_index=i,
        rank=-1,
        activation=values[focus],
        context_index=-1,
        position=focus,
        token_ids=[-1] * len(tokens),
        token_strs=[str(t) for t in tokens],
        values=values,
        focus=focus,
        kind=kind,
    )


def _labels(folder: Path, d_sae: int) -> list[tuple[int, dict]]:
    side = {lb["id"]: lb for r in _side_rows(folder, d_sae).values() for lb in r.get("labels", [])}
    out = []
    for row in _batches(folder, "explanations"):
        i = _feature_index(row, d_sae)
        text = _field(row, "description", str).strip()
        if not text or len(text) > MAX_LABEL_CHARS:
            raise SpecError(f"{row['_where']}: description must have 1..{MAX_LABEL_CHARS} "
                            "characters", field="description")  # fmt: skip
        extra = side.get(row.get("id"), {})
        auto = bool(row.get("typeName") or row.get("explanationModelName"))
        source = extra.get("source") or ("auto" if auto else "human")
        if source not in LABEL_SOURCES:
            raise SpecError(f"{row['_where']}: label source {source!r}", field="source")
        score = extra.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)
                                  or not math.isfinite(score)):  # fmt: skip
            raise SpecError(f"{row['_where']}: score is {score!r}, not a finite number",
                            field="score")  # fmt: skip
        when = extra.get("created_at")
        try:
            created = datetime.fromisoformat(when) if when else None
        except (TypeError, ValueError):
            raise SpecError(f"{row['_where']}: created_at is {when!r}, not an ISO time",
                            field="created_at") from None  # fmt: skip
        fields = {"text": text, "source": source,
                  "author": extra.get("author", row.get("explanationModelName")),
                  "score": score, "created_at": created}  # fmt: skip
        out.append((i, fields))
    return out
