"""bench/harvest_worker.py, the per-worker harvest path the GPU check runs, on this CPU
with the tiny Llama: it finishes, (c)'s stored rows equal the truncated forward's, and its
last line is the JSON the GPU check reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "harvest_worker.py"


def test_harvest_worker_bench_on_cpu(tiny_llama, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "SAEFEAT_HOME": str(tmp_path / "home")}
    args = ["--device", "cpu", "--model", str(tiny_llama), "--hook", "blocks.2.hook_resid_post",
            "--ctx-len", "16", "--batch", "2", "--batches", "4", "--shard-batches", "2",
            "--root", str(tmp_path)]  # fmt: skip
    r = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                       env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["c_rows_equal_a"] and out["b_hidden_state_equals_a"] and out["checksums_ok"]
    assert out["all_shards_committed"] and out["shards_timed"] == 2
    assert out["harvest_c_over_a"] > 0 and out["harvest_c_over_b"] > 0
    assert list(tmp_path.glob("saefeat-harvest-worker-*")) == []  # the set is removed
