"""A pipeline on a real two-node Ray cluster: a head (1 CPU) and a trainer node (1 CPU
and a custom `trainer` resource standing in for the GPU). The pipeline is submitted with
`saefeat --server URL submit` to `saefeat serve` joined to the head; its training asks
for the `trainer` resource, so it runs on the trainer node. That node is killed
mid-training and started again: the job finishes from its checkpoint, with no
duplicated catalog rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

RAY = Path(sys.executable).with_name("ray")
SAEFEAT = Path(sys.executable).with_name("saefeat")
HOOK = "blocks.1.hook_resid_post"
KEY = "sk-multinode-test"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_ports() -> list[str]:
    """Ports of its own for each node, so two nodes share this machine."""
    return [f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}"]  # fmt: skip


def _spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Its own session: the node (raylet and its workers) is one process group to kill.
    return subprocess.Popen(args, env=env, start_new_session=True, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)  # fmt: skip


def _kill(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _until(what, *, every: float = 0.3, limit: float = 600.0):
    """Poll `what` until it returns something truthy (a limit only against a hang)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what.__doc__ or what}")


@pytest.mark.skipif(not RAY.exists(), reason="the ray CLI is not installed beside python")
def test_pipeline_survives_its_training_node(tiny_llama, tmp_path):
    home = tmp_path / "home"
    ray_tmp = tempfile.mkdtemp(prefix="raym", dir="/tmp")
    port, api_port = _free_port(), _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp,
               SAEFEAT_HOME=str(home), SAEFEAT_ALLOWED_MODELS=str(tiny_llama),
               SAEFEAT_BOOTSTRAP_API_KEY=KEY, SAEFEAT_RAY_ADDRESS=f"127.0.0.1:{port}",
               # The head notices a dead node within about a second.
               RAY_health_check_period_ms="300", RAY_health_check_failure_threshold="3",
               RAY_health_check_initial_delay_ms="0")  # fmt: skip
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=80000000",
              "--block"]  # fmt: skip
    head = _spawn([str(RAY), "start", "--head", f"--port={port}", "--include-dashboard=false",
                   *common, *_own_ports()], env, tmp_path / "head.log")  # fmt: skip
    trainer_args = [str(RAY), "start", f"--address=127.0.0.1:{port}",
                    '--resources={"trainer": 1}', *common]  # fmt: skip
    nodes = [head]
    server = None
    try:
        _until(lambda: subprocess.run([str(RAY), "status", f"--address=127.0.0.1:{port}"],
                                      env=env, capture_output=True).returncode == 0)  # fmt: skip
        nodes.append(_spawn([*trainer_args, *_own_ports()], env, tmp_path / "trainer.log"))
        server = _spawn([str(SAEFEAT), "serve", "--port", str(api_port)], env,
                        tmp_path / "server.log")  # fmt: skip
        client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}",
                              headers={"Authorization": f"Bearer {KEY}"}, timeout=30)  # fmt: skip

        def up():
            try:
                return client.get("/v1/health").status_code == 200
            except httpx.TransportError:
                return False

        _until(up)
        body = {
            "harvest": {"model": str(tiny_llama), "hooks": [HOOK], "ctx_len": 16,
                        "token_budget": 16 * 32, "contexts_per_shard": 8, "batch_size": 8,
                        "model_dtype": "float32", "storage_dtype": "float32"},
            # Long enough to be killed in the middle (16,000 steps: a quiet machine runs
            # 4,000 in the time it takes to notice the first checkpoint and kill the node);
            # a checkpoint every 20 steps.
            "train": {"hook": HOOK, "d_sae": 64, "k": 4, "batch_size": 64, "epochs": 2000,
                      "checkpoint_every_tokens": 64 * 20, "eval_ce_contexts": 0,
                      "geometric_median_init": False},
            "index": {"n_examples": 2, "n_quantile_bins": 0, "n_neighbours": 0},
            "device": "cpu",
            "resources": {"trainer": 1},
        }  # fmt: skip
        cli = [str(SAEFEAT), "--server", f"http://127.0.0.1:{api_port}"]
        cli_env = dict(env, SAEFEAT_API_KEY=KEY)
        # A refusal is one line naming the field, exit 2, and no job.
        bad = subprocess.run([*cli, "submit", "pipeline", json.dumps(body | {"stages": ["x"]})],
                             env=cli_env, capture_output=True, text=True)  # fmt: skip
        assert bad.returncode == 2 and "stages.0" in bad.stderr, bad.stderr
        assert client.get("/v1/jobs").json()["items"] == []
        spec_file = tmp_path / "pipeline.json"
        spec_file.write_text(json.dumps(body))
        out = subprocess.run([*cli, "submit", "pipeline", str(spec_file)], env=cli_env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        job_id = out.stdout.strip()

        def training():
            """the training stage running, past its first checkpoint, far from its end"""
            stages = client.get(f"/v1/jobs/{job_id}").json()["stages"]
            train = stages[1]
            states = list((home / "train-state").glob("*/state.pt"))
            early = train["progress_done"] < (train["progress_total"] or 0) // 2
            return train["status"] == "running" and states and early and train

        train = _until(training, limit=300)
        # The trainer node dies (raylet and workers at once), then comes back.
        _kill(nodes.pop(), signal.SIGKILL)
        time.sleep(2)  # let the head see it gone before the node returns
        nodes.append(_spawn([*trainer_args, *_own_ports()], env, tmp_path / "trainer2.log"))

        def finished():
            """the pipeline finished"""
            job = client.get(f"/v1/jobs/{job_id}").json()
            return job["status"] not in ("queued", "running") and job

        job = _until(finished, every=1.0)
        assert job["status"] == "succeeded", (job, client.get(f"/v1/jobs/{train['job_id']}").text)
        stage = client.get(f"/v1/jobs/{train['job_id']}").json()
        assert stage["status"] == "succeeded"
        assert "resumed from checkpoint" in (stage["error"] or ""), stage
        # The training ran on the trainer node: no other node has that resource, so
        # Ray could place it nowhere else. One SAE row, each feature once.
        db = sqlite3.connect(home / "catalog.db")
        assert db.execute("select count(*) from saes").fetchone() == (1,)
        assert db.execute(
            'select count(*), count(distinct idx) from (select "index" as idx from features)'
        ).fetchone() == (64, 64)
        assert json.loads(db.execute("select metrics from saes").fetchone()[0])["steps"] > 0
        wide = cli_env | {"COLUMNS": "400"}  # one row a job, unwrapped
        listed = subprocess.run([*cli, "jobs"], env=wide, capture_output=True, text=True,
                                check=True).stdout  # fmt: skip
        assert job_id in listed and "train:succeeded" in listed
    finally:
        if server is not None:
            _kill(server)
        for node in reversed(nodes):
            _kill(node)
        shutil.rmtree(ray_tmp, ignore_errors=True)
