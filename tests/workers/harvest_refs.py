"""Helpers for the harvest tests: the hooks, a single-process reference, a comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saefeat.specs import HarvestSpec
from saefeat.storage.activations import ActivationSet
from saefeat.workers.harvest import prepare_set
from saefeat.workers.shard import ShardHarvester

HOOKS = ["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.2.hook_resid_post"]


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
