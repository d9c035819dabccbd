"""A pipeline on a real two-node Ray cluster: a head (1 CPU) and a trainer node (1 CPU
and a custom `trainer` resource standing in for the GPU). The pipeline is submitted with
`saefeat --server URL submit` to `saefeat serve` joined to the head; its training asks
for the `trainer` resource, so it runs on the trainer node. That node is killed
mid-training and started again: the job finishes from its checkpoint, with no
duplicated catalog rows."""

from __future__ import annotations

import json
import os
import re
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

from tests.ports import free_port, free_ports

RAY = Path(sys.executable).with_name("ray")
SAEFEAT = Path(sys.executable).with_name("saefeat")
HOOK = "blocks.1.hook_resid_post"
KEY = "sk-multinode-test"


def _own_ports(ports: list[int]) -> list[str]:
    """Ports of its own for each node (four distinct free ones), so two nodes share
    this machine."""
    listen, grpc, metrics, runtime_env = ports
    return [f"--dashboard-agent-listen-port={listen}", f"--dashboard-agent-grpc-port={grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}"]  # fmt: skip


def _tail(log: Path, n: int = 4000) -> str:
    return log.read_bytes()[-n:].decode(errors="replace") if log.exists() else "(no log)"


def _start_node(make_args, env: dict, log: Path, ready, *, tries: int = 3):
    """Start a Ray node and wait until `ready()`. A port picked free can be taken by
    another process before the node binds it, and the node then exits at once, so one
    that exits before it is ready is started again; `make_args()` picks fresh ports."""
    for _ in range(tries):
        proc = _spawn(make_args(), env, log)
        end = time.monotonic() + 300
        while proc.poll() is None:
            if ready():
                return proc
            if time.monotonic() > end:
                _kill(proc)
                raise AssertionError(f"the node was not ready in 300 s:\n{_tail(log)}")
            time.sleep(0.3)
        _kill(proc)  # whatever it started before it exited
    raise AssertionError(f"the node exited {tries} times before it was ready:\n{_tail(log)}")


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


def _until(what, *, alive: dict, every: float = 0.3, limit: float = 600.0):
    """Poll `what` until it returns something truthy (a limit only against a hang).
    `alive` maps each process that must stay up to its log: one that exits fails the
    wait at once, with its log, rather than after the limit."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        for proc, log in alive.items():
            if proc.poll() is not None:
                raise AssertionError(f"{log.name}: exited {proc.returncode}\n{_tail(log)}")
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what.__doc__ or what}")


@pytest.mark.skipif(not RAY.exists(), reason="the ray CLI is not installed beside python")
def test_pipeline_survives_its_training_node(tiny_llama, tmp_path):
    home = tmp_path / "home"
    ray_tmp = tempfile.mkdtemp(prefix="raym", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp,
               SAEFEAT_HOME=str(home), SAEFEAT_ALLOWED_MODELS=str(tiny_llama),
               SAEFEAT_BOOTSTRAP_API_KEY=KEY,
               # The head notices a dead node within about a second.
               RAY_health_check_period_ms="300", RAY_health_check_failure_threshold="3",
               RAY_health_check_initial_delay_ms="0")  # fmt: skip
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=80000000",
              "--block"]  # fmt: skip
    address = {}

    def head_args():
        gcs, client, *own = free_ports(6)
        address["gcs"] = f"127.0.0.1:{gcs}"
        return [str(RAY), "start", "--head", f"--port={gcs}", "--include-dashboard=false",
                f"--ray-client-server-port={client}", *common, *_own_ports(own)]  # fmt: skip

    def trainer_args():
        return [str(RAY), "start", f"--address={address['gcs']}",
                '--resources={"trainer": 1}', *common, *_own_ports(free_ports(4))]  # fmt: skip

    def status() -> str | None:
        out = subprocess.run([str(RAY), "status", f"--address={address['gcs']}"], env=env,
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout if out.returncode == 0 else None

    def trainer_up():
        """the cluster's resources include the trainer node's (`0.0/1.0 trainer`; a
        task waiting for it shows under pending demands, not here)"""
        return re.search(r"/\d+(\.\d+)? trainer$", status() or "", re.M) is not None

    alive: dict[subprocess.Popen, Path] = {}  # what must stay up, and its log
    try:
        head_log = tmp_path / "head.log"
        alive[_start_node(head_args, env, head_log, lambda: status() is not None)] = head_log
        env["SAEFEAT_RAY_ADDRESS"] = address["gcs"]
        trainer_log = tmp_path / "trainer.log"
        trainer = _start_node(trainer_args, env, trainer_log, trainer_up)
        alive[trainer] = trainer_log
        server_log = tmp_path / "server.log"
        api_port = free_port()  # picked now: every node's ports are bound by now
        server = _spawn([str(SAEFEAT), "serve", "--port", str(api_port)], env, server_log)
        alive[server] = server_log
        client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}",
                              headers={"Authorization": f"Bearer {KEY}"}, timeout=30)  # fmt: skip

        def up():
            try:
                return client.get("/v1/health").status_code == 200
            except httpx.TransportError:
                return False

        _until(up, alive=alive)
        body = {
            "stages": ["harvest", "train", "index"],  # the training's resume is the point
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

        train = _until(training, alive=alive, limit=300)
        # The trainer node dies (raylet and workers at once), then comes back.
        del alive[trainer]
        _kill(trainer, signal.SIGKILL)
        _until(lambda: not trainer_up(), alive=alive)  # the head saw it go
        trainer_log = tmp_path / "trainer2.log"
        alive[_start_node(trainer_args, env, trainer_log, trainer_up)] = trainer_log

        def finished():
            """the pipeline finished"""
            job = client.get(f"/v1/jobs/{job_id}").json()
            return job["status"] not in ("queued", "running") and job

        job = _until(finished, alive=alive, every=1.0)
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
        assert job_id in listed and "train: succeeded" in listed
    finally:
        for proc in reversed(alive):  # the last started first, the head last
            _kill(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
