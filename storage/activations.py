"""The activation store: one Zarr v3 group per activation set.

Layout of `<root>/<set_id>.zarr`:
  zarr.json            group attributes: spec, model, hooks, ctx_len, dtype, status, stats
  tokens               int32 [n_contexts, ctx_len], written whole before any activations
  doc_index, doc_offset int32 [n_contexts]: where each context starts in its source
  acts/<hook name>     uint16 | float16 | float32 [n_tokens, d], one Zarr shard per
                       harvest shard (bf16 stored as its raw uint16 bits)
  commits/shard-NNNNNN.json   the commit record of a harvest shard

A harvest shard is `contexts_per_shard` contexts; exactly one process writes it, then
fsyncs its files and atomically writes its commit record (rows + crc32 of the bytes of
each hook's data). Readers see committed shards only, so a worker that dies mid-write
leaves nothing visible and the shard is simply redone.

Contexts whose activations held NaN/Inf under the `on_nonfinite="drop"` policy stay in
their shard as zeros, so shards keep their fixed geometry; the commit record lists them
(`dropped`, absolute context indices) and readers and statistics leave them out.
A shard that kept killing its worker is skipped: the set is then marked
`complete_with_gaps` and `skipped_shards` in its attributes says which and why.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr

from saefeat.errors import CorruptDataError, NotFoundError, SpecError

STORAGE_DTYPES = {"bfloat16": "uint16", "float16": "float16", "float32": "float32"}
STATUS_HARVESTING = "harvesting"
STATUS_COMPLETE = "complete"
STATUS_COMPLETE_WITH_GAPS = "complete_with_gaps"


def encode_rows(x: torch.Tensor, storage_dtype: str) -> np.ndarray:
    """A float tensor as the numpy array stored on disk (bf16 -> its uint16 bits)."""
    if storage_dtype == "bfloat16":
        return x.detach().to("cpu", torch.bfloat16).view(torch.uint16).numpy()
    if storage_dtype in ("float16", "float32"):
        return x.detach().to("cpu", getattr(torch, storage_dtype)).numpy()
    raise SpecError(
        f"storage dtype {storage_dtype!r} cannot be stored; use one of {list(STORAGE_DTYPES)}",
        field="storage_dtype",
    )


def decode_rows(a: np.ndarray, storage_dtype: str) -> torch.Tensor:
    """Stored rows back to float32."""
    if storage_dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a)).view(torch.bfloat16).float()
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def bf16_bits_to_float32(a: np.ndarray) -> np.ndarray:
    """numpy-only bf16 decode (for dask blocks): the bits are the top half of a float32."""
    return (a.astype(np.uint32) << 16).view(np.float32)


def checksum(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).data)


def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """zarr-python never fsyncs; do it for a shard's files before committing it."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@dataclass
class ShardCommit:
    shard: int
    rows: int
    checksums: dict[str, int]
    dropped: list[int] = field(default_factory=list)  # contexts left out (NaN/Inf)


class ActivationSet:
    """A handle on one activation set on disk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise NotFoundError(f"no activation set at {self.path}")
        self.group = zarr.open_group(str(self.path), mode="r+")
        a = self.group.attrs
        self.id: str = a["set_id"]
        self.spec: dict = a["spec"]
        self.hooks: list[str] = list(a["hooks"])
        self.d_model: int = int(a["d_model"])
        self.ctx_len: int = int(a["ctx_len"])
        self.n_contexts: int = int(a["n_contexts"])
        self.contexts_per_shard: int = int(a["contexts_per_shard"])
        self.storage_dtype: str = a["storage_dtype"]
        self.model_name: str = a["model"]
        self.n_layers: int | None = a.get("n_layers")  # None: harvested before it was stored

    @property
    def revision(self) -> str | None:
        """The model revision (branch, tag or commit) the set was harvested at; None for
        the default. Whatever loads the model for this set's activations loads this one."""
        return self.spec.get("revision")

    # ---- creation -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        set_id: str,
        spec: dict,
        model: str,
        hooks: list[str],
        d_model: int,
        tokens: np.ndarray,
        doc_index: np.ndarray,
        doc_offset: np.ndarray,
        doc_ids: list[str],
        contexts_per_shard: int,
        storage_dtype: str = "bfloat16",
        chunk_rows: int | None = None,
        n_layers: int | None = None,
    ) -> ActivationSet:
        """Write the group, its token arrays and empty activation arrays.

        Built in a temporary folder and renamed into place, so a crash here never leaves
        a set that looks real.
        """
        if storage_dtype not in STORAGE_DTYPES:
            encode_rows(torch.zeros(1), storage_dtype)  # raises the SpecError
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        n_contexts, ctx_len = tokens.shape
        shard_rows = contexts_per_shard * ctx_len
        # Inner chunks let a reader fetch part of a shard; a quarter shard is a fair size.
        chunk_rows = chunk_rows or max(ctx_len, shard_rows // 4)
        g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        g.create_array("tokens", data=tokens.astype(np.int32), chunks=(contexts_per_shard, ctx_len))
        g.create_array("doc_index", data=doc_index.astype(np.int32))
        g.create_array("doc_offset", data=doc_offset.astype(np.int32))
        acts = g.create_group("acts")
        for hook in hooks:
            acts.create_array(
                hook,
                shape=(n_contexts * ctx_len, d_model),
                dtype=STORAGE_DTYPES[storage_dtype],
                chunks=(chunk_rows, d_model),
                shards=(shard_rows, d_model),
                compressors=None,  # float data barely compresses (1.09x) and costs write speed
                fill_value=0,
            )
        g.attrs.update(
            {
                "set_id": set_id,
                "spec": spec,
                "model": model,
                "hooks": hooks,
                "d_model": d_model,
                "n_layers": n_layers,
                "ctx_len": ctx_len,
                "n_contexts": n_contexts,
                "contexts_per_shard": contexts_per_shard,
                "storage_dtype": storage_dtype,
                "doc_ids": doc_ids,
                "status": STATUS_HARVESTING,
            }
        )
        (tmp / "commits").mkdir()
        _fsync_tree(tmp)
        os.replace(tmp, path)
        return cls(path)

    # ---- geometry -------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        return self.n_contexts * self.ctx_len

    @property
    def n_shards(self) -> int:
        return -(-self.n_contexts // self.contexts_per_shard)

    def shard_contexts(self, shard: int) -> tuple[int, int]:
        start = shard * self.contexts_per_shard
        return start, min(start + self.contexts_per_shard, self.n_contexts)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        c0, c1 = self.shard_contexts(shard)
        return c0 * self.ctx_len, c1 * self.ctx_len

    @property
    def status(self) -> str:
        return zarr.open_group(str(self.path), mode="r").attrs["status"]

    @property
    def stats(self) -> dict | None:
        return zarr.open_group(str(self.path), mode="r").attrs.get("stats")

    def acts_array(self, hook: str) -> zarr.Array:
        if hook not in self.hooks:
            raise SpecError(f"hook {hook!r} is not in this set; it has {self.hooks}", field="hook")
        # write_empty_chunks is a runtime setting, not stored with the array: without it a
        # reopened set skips (deletes) all-zero chunks, and scans every chunk to find them.
        return self.group["acts"][hook].with_config({"write_empty_chunks": True})

    def tokens(self, c0: int = 0, c1: int | None = None) -> np.ndarray:
        return self.group["tokens"][c0 : self.n_contexts if c1 is None else c1]

    # ---- writing a shard ------------------------------------------------------

    def _commit_path(self, shard: int) -> Path:
        return self.path / "commits" / f"shard-{shard:06d}.json"

    def write_shard(
        self, shard: int, acts: dict[str, torch.Tensor], dropped: list[int] | None = None
    ) -> ShardCommit:
        """Write every hook's rows of one shard, fsync them, then commit.

        `dropped`: contexts of this shard (absolute indices) that readers must skip.
        """
        r0, r1 = self.shard_rows(shard)
        c0, c1 = self.shard_contexts(shard)
        dropped = sorted(int(c) for c in (dropped or []))
        if any(not c0 <= c < c1 for c in dropped):
            raise ValueError(f"dropped contexts {dropped} are not all in shard {shard}")
        checks = {}
        for hook in self.hooks:
            x = acts[hook].reshape(-1, self.d_model)
            if x.shape[0] != r1 - r0:
                raise ValueError(f"shard {shard} of {hook}: {x.shape[0]} rows, want {r1 - r0}")
            data = encode_rows(x, self.storage_dtype)
            self.acts_array(hook)[r0:r1] = data
            checks[hook] = checksum(data)
        for hook in self.hooks:
            _fsync_tree(self.path / "acts" / hook / "c" / str(shard))
        commit = ShardCommit(shard, r1 - r0, checks, dropped)
        _atomic_write_json(self._commit_path(shard), commit.__dict__)
        return commit

    def commit_record(self, shard: int) -> ShardCommit | None:
        p = self._commit_path(shard)
        if not p.is_file():
            return None
        try:
            return ShardCommit(**json.loads(p.read_text()))
        except (json.JSONDecodeError, TypeError):
            return None  # a torn record counts as not committed

    def kept_rows(self, shard: int, *, skip_first_position: bool = False) -> np.ndarray:
        """Row offsets inside a committed shard that readers serve: not dropped contexts,
        and not position 0 when asked."""
        commit = self.commit_record(shard)
        r0, r1 = self.shard_rows(shard)
        rows = np.arange(r1 - r0)
        keep = np.ones(len(rows), dtype=bool)
        if skip_first_position:
            keep &= (rows + r0) % self.ctx_len != 0
        for c in commit.dropped if commit else ():
            keep[c * self.ctx_len - r0 : (c + 1) * self.ctx_len - r0] = False
        return rows[keep]

    def dropped_contexts(self) -> list[int]:
        return [c for s in self.committed_shards() for c in self.commit_record(s).dropped]

    @property
    def skipped_shards(self) -> dict[str, str]:
        """Shards left out after killing their worker too often: {shard: reason}."""
        return dict(zarr.open_group(str(self.path), mode="r").attrs.get("skipped_shards", {}))

    def committed_shards(self) -> list[int]:
        return [s for s in range(self.n_shards) if self.commit_record(s) is not None]

    def uncommitted_shards(self) -> list[int]:
        done = set(self.committed_shards())
        return [s for s in range(self.n_shards) if s not in done]

    # ---- reading ---------------------------------------------------------------

    def read_shard(self, shard: int, hook: str, *, verify: bool = False) -> torch.Tensor:
        """A committed shard's rows of one hook as float32 [rows, d]."""
        commit = self.commit_record(shard)
        if commit is None:
            raise NotFoundError(f"shard {shard} of set {self.id} is not committed")
        r0, r1 = self.shard_rows(shard)
        data = self.acts_array(hook)[r0:r1]
        if verify and checksum(data) != commit.checksums[hook]:
            raise CorruptDataError(
                f"shard {shard} of {hook} in set {self.id} fails its checksum: the data on "
                "disk changed after it was committed; re-harvest it"
            )
        return decode_rows(data, self.storage_dtype)

    def verify(self) -> list[int]:
        """Committed shards whose data no longer matches the commit record."""
        bad = []
        for s in self.committed_shards():
            for hook in self.hooks:
                try:
                    self.read_shard(s, hook, verify=True)
                except CorruptDataError:
                    bad.append(s)
                    break
        return bad

    def drop_shard(self, shard: int) -> None:
        """Forget a shard's commit so the next harvest run redoes it."""
        self._commit_path(shard).unlink(missing_ok=True)

    # ---- completion -------------------------------------------------------------

    def mark_complete(self, stats: dict, skipped: dict[int, str] | None = None) -> None:
        """Complete, or complete with gaps when every missing shard is a skipped one."""
        skipped = skipped or {}
        missing = [s for s in self.uncommitted_shards() if s not in skipped]
        if missing:
            raise RuntimeError(f"cannot complete set {self.id}: shards {missing} not committed")
        self.group.attrs.update(
            {
                "status": STATUS_COMPLETE_WITH_GAPS if skipped else STATUS_COMPLETE,
                "stats": stats,
                "skipped_shards": {str(s): why for s, why in sorted(skipped.items())},
            }
        )


def open_set(root: Path, set_id: str) -> ActivationSet:
    path = Path(root) / f"{set_id}.zarr"
    if not (path / "zarr.json").is_file():
        raise NotFoundError(f"no activation set {set_id!r} in {root}; harvest it first")
    return ActivationSet(path)
