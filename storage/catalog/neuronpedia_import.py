"""Reading a Neuronpedia export folder into the catalog (the layout is described in
saefeat.storage.catalog.neuronpedia, which writes it).

Every record is checked before the first write. A folder Neuronpedia itself exported has
none of our `saefeat/` side files: its records then give what they hold, and what they
do not (token ids, the context an example came from) is -1; the mean activation comes
from the histogram bars.

A transcoder keeps its output hook: our `saefeat` record's `hook_out`, else SAELens's
`hook_name_out`, else, for a source set named as a transcoder's (`...-transcoder-...`),
the MLP's output of its layer (its input then, without a `hook_name`, the MLP's norm's
output, `ln2.hook_normalized`, as SAELens's transcoders read).

The folder may come from anyone, so it is read as hostile: no symbolic link inside it is
followed (each is refused), only regular files are opened, files are decompressed as a
stream with caps on each line, each file and the whole folder, and an error names the
file, line and field at fault but never echoes what an unreadable file holds.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import stat
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.features.records import FeatureExample, FeatureIndex, TokenEffects, VocabProjection
from saefeat.shapes import HOOK_SPELLINGS
from saefeat.storage.catalog.labels import MAX_LABEL_CHARS, SCORE_RANGE
from saefeat.storage.catalog.models import (
    EFFECT_METHODS,
    EFFECT_SIDES,
    LABEL_SOURCES,
    SAE,
    Feature,
    Label,
)
from saefeat.storage.catalog.neuronpedia import EXAMPLE_SIDE_FIELDS, HOOK_SETS, TRANSCODER_SET
from saefeat.storage.catalog.registry import register_sae
from saefeat.storage.catalog.writer import write_feature_index

# Caps on what a folder may make us hold. Records are parsed into memory (the catalog
# index is written in one transaction), so these bound the import's memory: a line is
# decompressed and parsed whole (a Neuron row with a 16k-float vector is ~0.3 MB), a batch
# file holds 1024 features, and the folder's total bounds everything kept. Parsed, a
# kept list of floats or strings takes ~11x its JSON text: 512 MB of kept text is ~6 GB.
MAX_LINE_BYTES = 16 * 2**20
MAX_FILE_BYTES = 512 * 2**20
MAX_FOLDER_BYTES = 512 * 2**20
# A kept list (an example's tokens and values, a histogram): Neuronpedia's examples are
# 64-128 tokens; a longer list is no example, only memory.
MAX_LIST_ITEMS = 4096
# The largest published SAEs have 2^24 latents; more is no SAE but an allocation request.
MAX_D_SAE = 2**24
# The dense [d_sae, width] neighbour and histogram tables built before the write.
MAX_TABLE_BYTES = 2 * 2**30
MAX_INT = 2**31 - 1  # the catalog's integer columns (PostgreSQL INTEGER)
# The fields each kind of record is read for; the rest (vectors, embeddings, DFA values)
# is dropped as soon as a line is parsed, so it costs no memory past that line.
KEEP = {
    "source": {"id", "saelensConfig", "modelId"},
    "model": {"dimension"},
    "features": {
        "layer", "index", "frac_nonzero", "maxActApprox", "freq_hist_data_bar_heights",
        "freq_hist_data_bar_values", "pos_str", "neg_str", "pos_values", "neg_values",
        "topkCosSimIndices", "topkCosSimValues", "umap_x", "umap_y",
    },
    "activations": {"layer", "index", "tokens", "values", "id", "maxValueTokenIndex", "binMin"},
    "explanations": {
        "layer", "index", "description", "id", "typeName", "explanationModelName", "umap_x",
        "umap_y",
    },
    "saefeat": None,  # our side records: every field is read
}  # fmt: skip


def is_neuronpedia_folder(path: Path) -> bool:
    return _find_source(Path(path), strict=False) is not None


def _is_dir(p: Path) -> bool:
    """A real folder (a link to one is not: it is refused when the folder is read)."""
    try:
        return stat.S_ISDIR(p.lstat().st_mode)
    except OSError:
        return False


def _exists(p: Path) -> bool:
    return os.path.lexists(p)


def _find_source(path: Path, *, strict: bool = True) -> Path | None:
    """The source folder: `path` itself, or the one `<model>/<source>/` (or `<source>/`)
    below it that holds source.jsonl and features/. Only names are looked at here, links
    included, so that a source reached through a link is found, and then refused."""
    try:
        level1 = [p for p in sorted(path.iterdir()) if p.is_dir()] if path.is_dir() else []
        level2 = [q for p in level1 for q in sorted(p.iterdir()) if q.is_dir()]
    except OSError:  # unreadable: no source found here
        level1 = level2 = []
    found = [p for p in [path, *level1, *level2]
             if _exists(p / "source.jsonl") and _exists(p / "features")]  # fmt: skip
    if len(found) == 1 or (found and found[0] == path):
        return found[0]
    if strict:
        why = "holds several sources; name one" if found else "holds no source.jsonl + features/"
        raise SpecError(f"{path} {why}", field="path")
    return None


def _refuse_links(top: Path, folder: Path) -> None:
    """Refuse a symbolic link (or anything but folders and regular files) anywhere in the
    source folder or on the way to it from `top`: nothing outside the folder is read."""
    p = top
    for part in folder.relative_to(top).parts:
        p = p / part
        if not _is_dir(p):
            raise SpecError(f"{_rel(top, p)} is a link, not a folder; refused", field="path")
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            p = Path(root) / name
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise SpecError(f"{_rel(top, p)} is a symbolic link; refused", field="path")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise SpecError(f"{_rel(top, p)} is not a regular file; refused", field="path")


def _rel(top: Path, p: Path) -> str:
    try:
        return str(p.relative_to(top)) or "."
    except ValueError:
        return str(p)


class _Reader:
    """Reads a folder's JSONL files line by line under the caps, counting the bytes of
    the whole folder."""

    def __init__(self, top: Path):
        self.top, self.total = top, 0

    def _open(self, path: Path):
        where = _rel(self.top, path)
        try:
            # O_NOFOLLOW: a link put in place after the check is still refused.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            raise SpecError(f"{where} cannot be opened (a link or unreadable); refused",
                            field="path") from None  # fmt: skip
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SpecError(f"{where} is not a regular file; refused", field="path")
        return os.fdopen(fd, "rb")

    def lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        where = _rel(self.top, path)
        size = 0
        with self._open(path) as raw:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw
            n = 0
            while True:
                try:
                    line = stream.readline(MAX_LINE_BYTES + 1)
                except (OSError, EOFError, zlib.error):
                    # gzip's own message quotes the file's first bytes: name the file only
                    raise SpecError(f"{where} is not a complete gzip file", field="path") from None
                if not line:
                    return
                n += 1
                size += len(line)
                self.total += len(line)
                if len(line) > MAX_LINE_BYTES:
                    raise SpecError(f"{where}:{n}: a line is longer than {MAX_LINE_BYTES:,} "
                                    "bytes (the cap)", field="path")  # fmt: skip
                if size > MAX_FILE_BYTES:
                    raise SpecError(f"{where} holds more than {MAX_FILE_BYTES:,} bytes "
                                    "(the cap on a file, decompressed)", field="path")  # fmt: skip
                if self.total > MAX_FOLDER_BYTES:
                    raise SpecError(f"the folder holds more than {MAX_FOLDER_BYTES:,} "
                                    f"bytes (the cap, decompressed; at {where})",
                                    field="path")  # fmt: skip
                yield n, line

    def rows(self, path: Path, kind: str) -> list[dict[str, Any]]:
        where, keep = f"{path.parent.name}/{path.name}", KEEP[kind]
        rows = []
        for n, line in self.lines(path):
            if not line.strip():
                continue
            if b"\\u0000" in line:  # PostgreSQL text cannot hold NUL; SQLite would keep it
                raise SpecError(f"{where}:{n}: a string holds a NUL character (\\u0000)",
                                field="path")  # fmt: skip
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                raise SpecError(f"{where}:{n}: not UTF-8", field="path") from None
            except json.JSONDecodeError as e:  # its message gives the place, not the text
                raise SpecError(f"{where}:{n}: not JSON ({e.msg} at column {e.colno})",
                                field="path") from None  # fmt: skip
            except (ValueError, RecursionError):  # a 5000-digit number, [[[[...]]]]
                raise SpecError(f"{where}:{n}: not JSON saefeat can read (a number too "
                                "long or nesting too deep)", field="path") from None  # fmt: skip
            if not isinstance(row, dict):
                raise SpecError(f"{where}:{n}: a line is not a JSON object", field="path")
            if keep is not None:
                row = {k: v for k, v in row.items() if k in keep}
            for key, value in row.items():
                if isinstance(value, list) and len(value) > MAX_LIST_ITEMS:
                    raise SpecError(f"{where}:{n}: {key} has {len(value):,} items; at most "
                                    f"{MAX_LIST_ITEMS:,}", field=key)  # fmt: skip
            row["_where"] = f"{where}:{n}"
            rows.append(row)
        return rows

    def batches(self, folder: Path, sub: str) -> list[dict[str, Any]]:
        if not _is_dir(folder / sub):
            return []
        numbered = []
        for p in (folder / sub).glob("batch-*.jsonl.gz"):
            m = re.fullmatch(r"batch-(\d+)\.jsonl\.gz", p.name)
            digits = (m.group(1).lstrip("0") or "0") if m else ""
            numbered.append(((len(digits), digits, p.name), p))  # by number, without int()
        return [row for _, f in sorted(numbered) for row in self.rows(f, sub)]


def _short(value: Any) -> str:
    """A value for an error message: its repr, cut short (a line may be megabytes)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(row: dict, name: str, kind: type | tuple[type, ...], *, optional: bool = False):
    value = row.get(name)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool
            or isinstance(value, float) and not math.isfinite(value)):  # fmt: skip
        raise SpecError(f"{row['_where']}: {name} is {_short(value)}", field=name)
    return value


def _text(record: dict, name: str, where: str, most: int, *, optional: bool = False):
    """A string field that fits its catalog column (PostgreSQL enforces the width)."""
    value = record.get(name)
    if optional and (value is None or value == ""):
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > most:
        raise SpecError(f"{where}: {name} is {_short(value)}, not a text of 1..{most} "
                        "characters", field=name)  # fmt: skip
    return value


def _feature_index(row: dict, d_sae: int | None = None) -> int:
    """A record's feature index: an integer, or its decimal digits as Neuronpedia writes
    it, in 0..d_sae-1 (0..MAX_D_SAE-1 while d_sae is not known)."""
    raw = row.get("index")
    if isinstance(raw, str) and re.fullmatch(r"\d{1,10}", raw):
        i = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        i = raw
    else:
        raise SpecError(f"{row['_where']}: index is {_short(raw)}, not a feature index",
                        field="index")  # fmt: skip
    end = d_sae if d_sae is not None else MAX_D_SAE
    if not 0 <= i < end:
        raise SpecError(f"{row['_where']}: index {i} is outside 0..{end - 1}", field="index")
    return i


def _key(value: Any) -> str | int | None:
    """A record id to look a side record up by (a list or object is no id)."""
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


def _row_id(row: dict) -> str | int | None:
    """An Activation's or Explanation's id: absent, or a string or integer."""
    value = row.get("id")
    if value is not None and _key(value) is None:
        raise SpecError(f"{row['_where']}: id is {_short(value)}, not an id", field="id")
    return value


@dataclass
class ImportSummary:
    sae_id: str
    n_features: int
    n_examples: int
    n_labels: int


@dataclass
class _Records:
    neurons: list[dict]
    activations: list[dict]
    explanations: list[dict]
    side: dict[int, dict]


def import_neuronpedia(session: Session, path: Path, sae_id: str) -> ImportSummary:
    """Read a Neuronpedia source folder into the catalog as SAE `sae_id` (features,
    examples, projections, neighbours, labels). Every record is checked before the first
    write; the writes are one commit, and the labels (which need the new feature ids)
    follow in a second that, if it fails, removes the SAE again: nothing half-written."""
    top = Path(path)
    folder = _find_source(top)
    assert folder is not None
    if session.get(SAE, sae_id) is not None:
        raise SpecError(f"SAE {sae_id!r} exists; import under a new id", field="id")
    _refuse_links(top, folder)
    reader = _Reader(top)
    source = reader.rows(folder / "source.jsonl", "source")
    if len(source) != 1:
        raise SpecError("source.jsonl must hold one record", field="path")
    source_row = source[0]
    source_id = _text(source_row, "id", "source.jsonl", 200)
    cfg = _saelens_config(source_row)
    model_path = folder / "model.jsonl"
    model_rows = reader.rows(model_path, "model") if _exists(model_path) else []
    neurons = reader.batches(folder, "features")
    if not neurons:
        raise SpecError("features/ holds no features", field="path")
    activations = reader.batches(folder, "activations")
    explanations = reader.batches(folder, "explanations")
    for row in neurons + activations + explanations:
        if row.get("layer") != source_id:
            raise SpecError(f"{row['_where']}: layer is {_short(row.get('layer'))}, not the "
                            f"source {source_id!r}", field="layer")  # fmt: skip
    d_sae = _count(cfg, "d_sae", "source.jsonl: saelensConfig", most=MAX_D_SAE) or max(
        _feature_index(r) for r in neurons) + 1  # fmt: skip
    records = _Records(neurons, activations, explanations,
                       _side_rows(reader.batches(folder, "saefeat"), d_sae))  # fmt: skip
    index = _feature_index_from(records, d_sae)
    labels = _labels(records, d_sae)
    hook = _text(cfg, "hook_name", "saelensConfig", 200, optional=True)
    hook_out = _hook_out(cfg, source_id)
    if hook is None:
        hook = _hook_from_source(source_id, transcoder=hook_out is not None)
    d_in = _count(cfg, "d_in", "source.jsonl: saelensConfig") or (
        _count(model_rows[0], "dimension", "model.jsonl") if model_rows else None)  # fmt: skip
    if not d_in:
        raise SpecError("neither saelensConfig.d_in nor model.dimension gives d_in", field="d_in")
    saefeat_meta = _object(cfg, "saefeat", "saelensConfig")
    where = "saelensConfig.saefeat"
    # our export names the hub id for Neuronpedia, and the name saefeat loads it by here
    model_name = (
        _text(saefeat_meta, "model_name", where, 300, optional=True)
        or _text(cfg, "model_name", "saelensConfig", 300, optional=True)
        or _text(source_row, "modelId", "source.jsonl", 300)
    )
    name = _text(saefeat_meta, "name", where, 300, optional=True) or f"{model_name} {source_id}"
    try:
        register_sae(
            session, sae_id=sae_id, name=name[:300], model_name=model_name, hook_name=hook,
            hook_out_name=hook_out,
            architecture=_text(cfg, "architecture", "saelensConfig", 50, optional=True)
            or "unknown", d_in=d_in, d_sae=d_sae, k=_count(cfg, "k", "saelensConfig"),
            cfg=_object(saefeat_meta, "cfg", where),
            metrics=_object(saefeat_meta, "metrics", where),
        )  # fmt: skip
        summary = write_feature_index(session, sae_id, index)  # commits the SAE with its index
    except BaseException:
        session.rollback()  # a refused index leaves no registered SAE behind
        raise
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


def _object(record: dict, name: str, where: str) -> dict:
    value = record.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}.{name} is not a JSON object", field=name)
    return value


def _saelens_config(source_row: dict) -> dict:
    """source.saelensConfig: an object, or (as some exports hold it) a JSON string of one."""
    cfg = source_row.get("saelensConfig") or {}
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except (ValueError, RecursionError):
            cfg = None
    if not isinstance(cfg, dict):
        raise SpecError("source.jsonl: saelensConfig is not a JSON object", field="saelensConfig")
    return cfg


def _count(record: dict, name: str, where: str = "", *, most: int = MAX_INT) -> int | None:
    """A positive integer field up to `most`, or None where it is absent."""
    value = record.get(name)
    if value is None:
        return None
    at = f"{where}.{name}" if where else name
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{at} is {_short(value)}, not a positive integer", field=name)
    if value > most:
        raise SpecError(f"{at} is {value}, above the most saefeat imports ({most:,})",
                        field=name)  # fmt: skip
    return value


def _source_parts(source_id: str) -> tuple[int, str]:
    """(layer, set name) of a source id `<layer>-<set name>`."""
    m = re.match(r"^(\d{1,4})-(.*)$", source_id)
    if not m:
        raise SpecError(f"source id {_short(source_id)} does not start with a layer",
                        field="layer")  # fmt: skip
    return int(m.group(1)), m.group(2)


def _has_word(set_name: str, word: str) -> bool:
    return re.search(rf"(^|-){re.escape(word)}(-|$)", set_name) is not None


def _hook_out(cfg: dict, source_id: str) -> str | None:
    """A transcoder's output hook (module docstring); None for an SAE."""
    meta = _object(cfg, "saefeat", "saelensConfig")
    named = _text(meta, "hook_out", "saelensConfig.saefeat", 200, optional=True) or _text(
        cfg, "hook_name_out", "saelensConfig", 200, optional=True)  # fmt: skip
    if named:
        return named
    layer, set_name = _source_parts(source_id)
    if _has_word(set_name, TRANSCODER_SET):
        return f"blocks.{layer}.{HOOK_SPELLINGS['mlp_out']}"
    return None


def _hook_from_source(source_id: str, *, transcoder: bool = False) -> str:
    layer, set_name = _source_parts(source_id)
    if transcoder:
        return f"blocks.{layer}.{HOOK_SPELLINGS['ln2_normalized']}"
    words = {word: kind for kind, word in HOOK_SETS.items()}
    for word, kind in sorted(words.items(), key=lambda kv: -len(kv[0])):
        if _has_word(set_name, word):
            return f"blocks.{layer}.{HOOK_SPELLINGS[kind]}"
    raise SpecError(f"cannot tell the hook from source id {_short(source_id)}", field="hook")


def _is_int(v: Any, low: int = -1, high: int = MAX_INT) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _side_rows(rows: list[dict], d_sae: int) -> dict[int, dict]:
    """Our side records by feature index, their shapes checked (one a feature)."""
    out: dict[int, dict] = {}
    for row in rows:
        i = _feature_index(row, d_sae)
        where = row["_where"]
        if i in out:
            raise SpecError(f"{where}: a second side record of feature {i}", field="index")
        for name in ("examples", "labels"):
            items = row.get(name) or []
            if not isinstance(items, list) or not all(
                isinstance(e, dict) and _key(e.get("id")) is not None for e in items
            ):
                raise SpecError(f"{where}: {name} must be a list of records with an id",
                                field=name)  # fmt: skip
        mean = row.get("mean_activation")
        if mean is not None and not _is_number(mean):
            raise SpecError(f"{where}: mean_activation is {_short(mean)}, not a finite number",
                            field="mean_activation")  # fmt: skip
        h = row.get("histogram")
        if h and not (
            isinstance(h, dict) and isinstance(h.get("edges"), list)
            and isinstance(h.get("counts"), list) and len(h["edges"]) >= 2
            and all(_is_number(v) for v in h["edges"])
            and len(h["counts"]) == len(h["edges"]) - 1
            and all(_is_int(c, 0, 2**62) for c in h["counts"])
        ):  # fmt: skip
            raise SpecError(f"{where}: histogram must have finite edges and one count fewer",
                            field="histogram")  # fmt: skip
        for name in ("pos_ids", "neg_ids"):
            ids = row.get(name)
            if ids is not None and not (isinstance(ids, list) and all(_is_int(t) for t in ids)):
                raise SpecError(f"{where}: {name} must be a list of token ids", field=name)
        out[i] = row
    return out


def _floats(row: dict, name: str) -> list[float]:
    values = row.get(name) or []
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
        raise SpecError(f"{row['_where']}: {name} must be a list of finite numbers", field=name)
    return [float(v) for v in values]


def _strings(row: dict, name: str) -> list[str]:
    values = row.get(name) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SpecError(f"{row['_where']}: {name} must be a list of strings", field=name)
    return values


def _check_table(d_sae: int, width: int, bytes_per_cell: int, field: str) -> None:
    """Refuse a [d_sae, width] table too large to build (a hostile width times d_sae)."""
    if d_sae * width * bytes_per_cell > MAX_TABLE_BYTES:
        raise SpecError(f"{width} {field} per feature for {d_sae:,} features need more than "
                        f"{MAX_TABLE_BYTES:,} bytes (the cap)", field=field)  # fmt: skip


def _feature_index_from(records: _Records, d_sae: int) -> FeatureIndex:
    side = records.side
    density, max_act, mean_act = np.zeros(d_sae), np.zeros(d_sae), np.zeros(d_sae)
    histograms: dict[int, dict] = {}
    projections, near = [], {}
    seen: set[int] = set()
    for row in records.neurons:
        i = _feature_index(row, d_sae)
        if i in seen:  # two rows of one feature: which to believe is anyone's guess
            raise SpecError(f"{row['_where']}: index {i} appears a second time in features/",
                            field="index")  # fmt: skip
        seen.add(i)
        extra = side.get(i, {})
        density[i] = _field(row, "frac_nonzero", float)
        max_act[i] = _field(row, "maxActApprox", float, optional=True) or 0.0
        heights, centres = _floats(row, "freq_hist_data_bar_heights"), _floats(
            row, "freq_hist_data_bar_values")  # fmt: skip
        if len(heights) != len(centres):
            raise SpecError(f"{row['_where']}: freq_hist_data_bar_heights and _values differ "
                            "in length", field="freq_hist_data_bar_heights")  # fmt: skip
        mean = extra.get("mean_activation")
        if mean is None and sum(heights) > 0:  # Neuronpedia keeps no mean: the histogram's
            mean = float(np.dot(heights, centres) / sum(heights))
            mean = mean if math.isfinite(mean) else 0.0
        mean_act[i] = mean or 0.0
        if extra.get("histogram"):
            histograms[i] = extra["histogram"]
        pos, neg = _strings(row, "pos_str"), _strings(row, "neg_str")
        pos_v, neg_v = _floats(row, "pos_values"), _floats(row, "neg_values")
        if len(pos) != len(pos_v) or len(neg) != len(neg_v):
            raise SpecError(f"{row['_where']}: pos/neg strings and values differ in length",
                            field="pos_str")  # fmt: skip
        pos_ids, neg_ids = extra.get("pos_ids") or [-1] * len(pos), extra.get("neg_ids") or [
            -1] * len(neg)  # fmt: skip
        if len(pos_ids) != len(pos) or len(neg_ids) != len(neg):
            raise SpecError(f"saefeat side record of feature {i}: pos_ids/neg_ids differ "
                            "in length from the feature's pos_str/neg_str",
                            field="pos_ids")  # fmt: skip
        projections.append(VocabProjection(i, pos_ids, list(pos), pos_v, neg_ids, list(neg),
                                           neg_v))  # fmt: skip
        cos_i = row.get("topkCosSimIndices") or []
        if not isinstance(cos_i, list) or not all(_is_int(j, 0, d_sae - 1) for j in cos_i):
            raise SpecError(f"{row['_where']}: topkCosSimIndices must be feature indices "
                            f"0..{d_sae - 1}", field="topkCosSimIndices")  # fmt: skip
        cos_v = _floats(row, "topkCosSimValues")
        if len(cos_v) != len(cos_i):
            raise SpecError(f"{row['_where']}: topkCosSimIndices and topkCosSimValues differ "
                            "in length", field="topkCosSimValues")  # fmt: skip
        near[i] = (list(cos_i), cos_v)
    examples = _examples(records, d_sae, max_act)
    umap = _umap(records, d_sae)
    effects = [e for i, row in sorted(side.items()) for e in _effects(i, row)]
    width = max((len(a) for a, _ in near.values()), default=0)
    _check_table(d_sae, width, 16, "topkCosSimIndices")
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
                isinstance(e, list) and len(e) == 3 and _is_int(e[0])
                and isinstance(e[1], str) and _is_number(e[2])
                for e in entries
            ):  # fmt: skip
                raise SpecError(f"{where}.{method}.{side} must be [token_id, token, value] "
                                "entries with a finite value", field="effects")  # fmt: skip
            cols[side] = ([e[0] for e in entries], [e[1] for e in entries],
                          [float(e[2]) for e in entries])  # fmt: skip
        out.append(TokenEffects(i, method, *cols["up"], *cols["down"]))
    return out


def _umap(records: _Records, d_sae: int):
    """[d_sae, 2] map coordinates (NaN where a feature has none), or None when no record
    holds any: the side record's, else the Neuron row's, else an Explanation row's."""
    xy = np.full((d_sae, 2), np.nan)
    rows = [(_feature_index(r, d_sae), r) for r in records.explanations]
    rows += [(_feature_index(r, d_sae), r) for r in records.neurons]
    rows += [(i, {**r, "_where": f"saefeat side record of feature {i}"})
             for i, r in records.side.items()]  # fmt: skip
    for i, row in rows:  # later sources win: side records last
        x, y = row.get("umap_x"), row.get("umap_y")
        if x is None and y is None:
            continue
        if not all(_is_number(v) for v in (x, y)):
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
    _check_table(d_sae, len(edges) - 1, 8, "histogram")
    counts = np.zeros((d_sae, len(edges) - 1), dtype=np.int64)
    for i, h in histograms.items():
        counts[i] = h["counts"]
    return np.asarray(edges, dtype=float), counts


def _examples(records: _Records, d_sae: int, max_act: np.ndarray):
    extra = {e["id"]: e for r in records.side.values() for e in r.get("examples") or []}
    by_feature: dict[tuple[int, str], list] = defaultdict(list)
    for row in records.activations:
        i = _feature_index(row, d_sae)
        tokens = row.get("tokens")
        values = _floats(row, "values")
        if not isinstance(tokens, list) or len(tokens) != len(values) or not tokens:
            raise SpecError(f"{row['_where']}: tokens and values must be equal, non-empty lists",
                            field="tokens")  # fmt: skip
        e = extra.get(_row_id(row))
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
        ok = all(_is_int(v) for v in (ex.rank, ex.focus, ex.context_index, ex.position,
                                      *ex.token_ids)) and math.isfinite(ex.activation)  # fmt: skip
    except (KeyError, TypeError, ValueError, OverflowError):
        ok = False
    if not ok or len(ex.token_ids) != len(tokens) or ex.kind not in ("top", "quantile"):
        raise SpecError(f"{row['_where']}: its saefeat/ side record {_short(row.get('id'))} "
                        "is malformed", field="saefeat")  # fmt: skip
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


def _labels(records: _Records, d_sae: int) -> list[tuple[int, dict]]:
    side = {lb["id"]: lb for r in records.side.values() for lb in r.get("labels") or []}
    out = []
    for row in records.explanations:
        i = _feature_index(row, d_sae)
        text = _field(row, "description", str).strip()
        if not text or len(text) > MAX_LABEL_CHARS:
            raise SpecError(f"{row['_where']}: description must have 1..{MAX_LABEL_CHARS} "
                            "characters", field="description")  # fmt: skip
        extra = side.get(_row_id(row), {})
        auto = bool(row.get("typeName") or row.get("explanationModelName"))
        source = extra.get("source") or ("auto" if auto else "human")
        if not isinstance(source, str) or source not in LABEL_SOURCES:
            raise SpecError(f"{row['_where']}: label source {_short(source)}", field="source")
        score, (low, high) = extra.get("score"), SCORE_RANGE
        if score is not None and not (_is_number(score) and low <= score <= high):
            raise SpecError(f"{row['_where']}: score is {_short(score)}, not a number in "
                            f"[{low:g}, {high:g}]", field="score")  # fmt: skip
        when = extra.get("created_at")
        try:
            created = datetime.fromisoformat(when) if when else None
        except (TypeError, ValueError):
            raise SpecError(f"{row['_where']}: created_at is {_short(when)}, not an ISO time",
                            field="created_at") from None  # fmt: skip
        author = extra.get("author", row.get("explanationModelName"))
        if author is not None and (not isinstance(author, str) or len(author) > 200):
            raise SpecError(f"{row['_where']}: author is {_short(author)}, not a name of up "
                            "to 200 characters", field="author")  # fmt: skip
        fields = {"text": text, "source": source, "author": author, "score": score,
                  "created_at": created}  # fmt: skip
        out.append((i, fields))
    return out
