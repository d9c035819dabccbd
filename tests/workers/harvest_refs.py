"""Helpers for the harvest tests: the hooks, a single-process reference, a comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saefeat.corpus import BUILTIN_PYTHON_DOCS, CorpusRoots
from saefeat.specs import HarvestSpec
from saefeat.storage.activations import ActivationSet
from saefeat.workers.harvest import prepare_set
from saefeat.workers.shard import ShardHarvester

HOOKS = ["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.2.hook_resid_post"]


def own_roots(spec: HarvestSpec) -> CorpusRoots:
    """The spec's own corpus paths as the roots: the test trusts the files it wrote."""
    return CorpusRoots.of(s.path for s in spec.corpus if s.path != BUILTIN_PYTHON_DOCS)


def reference_set(spec: HarvestSpec, root: Path) -> ActivationSet:
    """The same spec harvested in this process, shard after shard, no Ray."""
    aset, _ = prepare_set(spec, root, own_roots(spec))
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
