"""A harvest against a Ray cluster named by SAEFEAT_RAY_ADDRESS (a head started with
`ray start`), run from a separate driver process as a user would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.ports import free_ports

RAY = Path(sys.executable).with_name("ray")


@pytest.mark.skipif(not RAY.exists(), reason="the ray CLI is not installed beside python")
def test_harvest_on_a_cluster_address(spec, tmp_path):
    port, *own = free_ports(6)
    # A temp dir of its own (short: it holds unix sockets) keeps this head's
    # ray_current_cluster file away from every other Ray on the machine.
    ray_tmp = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", SAEFEAT_HOME=str(tmp_path / "home"),
               SAEFEAT_CORPUS_ROOTS=str(tmp_path), RAY_TMPDIR=ray_tmp)  # fmt: skip
    # Every port of our own, so this head never meets the suite's session-wide Ray.
    head = ["--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
            "--node-ip-address=127.0.0.1", "--object-store-memory=80000000",
            f"--dashboard-agent-listen-port={own[0]}", f"--dashboard-agent-grpc-port={own[1]}",
            f"--metrics-export-port={own[2]}", f"--runtime-env-agent-port={own[3]}",
            f"--ray-client-server-port={own[4]}", "--block"]  # fmt: skip
    # `--block` keeps the head in the foreground and takes down what it started when
    # killed; its own session keeps `ray stop` (which kills every Ray) out of it.
    proc = subprocess.Popen([str(RAY), "start", *head], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        env["SAEFEAT_RAY_ADDRESS"] = f"127.0.0.1:{port}"
        driver = (
            "import sys; from saefeat.specs import HarvestSpec; "
            "from saefeat.config import get_settings; "
            "from saefeat.workers.harvest import harvest; import ray; "
            "r = harvest(HarvestSpec.model_validate_json(sys.argv[1]), settings=get_settings()); "
            "print(r.activation_set.status, r.activation_set.n_tokens, "
            "ray.get_runtime_context().gcs_address)"
        )
        out = subprocess.run(
            [sys.executable, "-c", driver, spec.model_dump_json()],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        status, n_tokens, address = out.stdout.split()[-3:]
        assert status == "complete" and int(n_tokens) == 20 * 16
        assert address.endswith(f":{port}")  # it joined our head, not a fresh local Ray
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
