"""A harvest worker that dies half-way through writing chosen shards, as a killed
process would: the tests put it in workers/harvest.py's HarvestWorker seam."""

from __future__ import annotations

import os
import sys

import torch
from ray import cloudpickle

from saefeat.storage.activations import encode_rows
from saefeat.workers import harvest as harvest_module

# Ray's workers cannot import this test module: ship its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MARKERS = ".test-crashes"  # one file per shard; a byte per death, kept across restarts


class CrashingHarvester(harvest_module._RayShardHarvester):
    plan: dict[int, int] = {}  # shard -> the attempts that die (-1: every attempt)

    def __init__(self, *args):
        super().__init__(*args)
        write = self.aset.write_shard

        def write_or_die(shard, rows, dropped):
            self._maybe_die(shard, rows)
            return write(shard, rows, dropped)

        self.aset.write_shard = write_or_die

    def _maybe_die(self, shard: int, rows: dict[str, torch.Tensor]) -> None:
        times = self.plan.get(shard)
        if times is None:
            return
        marker = self.aset.path / MARKERS / f"shard-{shard}"
        marker.parent.mkdir(exist_ok=True)
        tried = marker.stat().st_size if marker.exists() else 0
        if times != -1 and tried >= times:
            return
        with marker.open("ab") as f:
            f.write(b"x")
        hook = self.spec.hooks[0]
        r0, r1 = self.aset.shard_rows(shard)
        garbage = torch.full_like(rows[hook], 7.0)  # half-written data must never be seen
        self.aset.acts_array(hook)[r0:r1] = encode_rows(garbage, self.aset.storage_dtype)
        os._exit(1)


def crashing_worker(plan: dict[int, int]):
    """An actor class whose workers die on the first `times` attempts at each shard."""
    return harvest_module.remote_harvester(
        type("PlannedCrashes", (CrashingHarvester,), {"plan": dict(plan)})
    )


def crashes(aset, shard: int) -> int:
    marker = aset.path / MARKERS / f"shard-{shard}"
    return marker.stat().st_size if marker.exists() else 0
