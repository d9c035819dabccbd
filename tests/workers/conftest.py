"""Harvest fixtures: a small multi-hook, multi-source spec and a single-process reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saefeat.specs import HarvestSpec
from saefeat.storage.activations import ActivationSet
from saefeat.workers.harvest import prepare_set
from saefeat.workers.shard import ShardHarvester

HOOKS = ["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.2.hook_resid_post"]


@pytest.fixture
def two_sources(tmp_path) -> list[dict]:
    a = tmp_path / "corpus-a"
    a.mkdir()
    for i in range(6):
        (a / f"a{i}.txt").write_text(f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 8)
    b = tmp_path / "b.jsonl"
    b.write_text("".join(f'{{"text": "Sparse features number {i} of the stream. "}}\n' * 1
                         for i in range(60)))  # fmt: skip
    return [{"path": str(a), "weight": 2.0}, {"path": str(b), "weight": 1.0}]


@pytest.fixture
def spec(tiny_llama, two_sources) -> HarvestSpec:
    return HarvestSpec(
        model=str(tiny_llama),
        hooks=HOOKS,
        corpus=two_sources,
        ctx_len=16,
        token_budget=16 * 20,
        contexts_per_shard=4,
        batch_size=2,
        model_dtype="float32",
        storage_dtype="float32",
    )


def reference_set(spec: HarvestSpec, root: Path) -> ActivationSet:
    """The same spec harvested in this process, shard after shard, no Ray."""
    aset, _ = prepare_set(spec, root)
    worker = ShardHarvester(spec.model_dump_json(), str(aset.path), "cpu", threads=1)
    for s in range(aset.n_shards):
        worker.harvest_shard(s)
    return aset


def assert_same_data(got: ActivationSet, want: ActivationSet, shards=None) -> None:
    assert np.array_equal(got.tokens(), want.tokens())
    for s in shards if shards is not None else range(want.n_shards):
        assert got.commit_record(s).rows == want.commit_record(s).rows
        for h in want.hooks:
            torch.testing.assert_close(got.read_shard(s, h, verify=True), want.read_shard(s, h))
