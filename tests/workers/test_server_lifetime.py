"""`saefeat serve` as a user runs it, as a subprocess, with Ray's token auth on (issue 11).

A harvest submitted over HTTP used to start Ray in its job thread; Ray died with the
thread and the server a minute later. Here the server must still answer two minutes
after its first job and run a second one; everything it and its Ray listen on is on
loopback; a Ray client without the token is refused; SIGTERM hands a running job back
and leaves no process of the server or its Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from saefeat.workers.jobs import SHUTDOWN
from tests.ports import free_port

SAEFEAT = Path(sys.executable).with_name("saefeat")
KEY = "sk-lifetime-test-key-0123456789abcdef"
OUTLIVE_S = 125  # the API used to exit ~60 s after Ray went; twice that and some


def _session_pids(sid: int) -> set[str]:
    out = subprocess.run(["ps", "-o", "pid=", "-s", str(sid)], capture_output=True, text=True)
    return set(out.stdout.split())


def _listeners(sid: int) -> list[tuple[str, str]]:
    """(local address, process) of every TCP listener of the server's session."""
    pids = _session_pids(sid)
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={p}," in line for p in pids):
            fields = line.split()
            found.append((fields[3], fields[5].split('"')[1]))
    return found


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _spec(model: Path, corpus: Path, contexts: int, per_shard: int = 4) -> dict:
    return {"model": str(model), "hooks": ["blocks.1.hook_resid_post"],
            "corpus": [str(corpus)], "ctx_len": 16, "token_budget": 16 * contexts,
            "contexts_per_shard": per_shard, "batch_size": 4, "model_dtype": "float32",
            "storage_dtype": "float32"}  # fmt: skip


def _wait_job(client: httpx.Client, job_id: str, until, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never got there: {job}")


def _finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def _outsider_output(gcs: str, env: dict) -> str:
    """What a Ray driver with a wrong token says when it tries to join the server's Ray
    (it may keep retrying: then what it said in the first 90 s)."""
    code = f"import ray; ray.init(address={gcs!r}); print('JOINED')"
    # Ray would turn 127.0.0.1 into the host's address, where nothing listens; this
    # driver is to reach the GCS and be refused by it.
    env = env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64,
                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # fmt: skip
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             timeout=90)  # fmt: skip
        said = [out.stdout, out.stderr]
    except subprocess.TimeoutExpired as e:
        said = [e.stdout, e.stderr]
    return "".join((b or b"").decode(errors="replace") for b in said)


def _no_process_left(sid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (left := _session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-s", str(sid)], capture_output=True,
                         text=True).stdout  # fmt: skip
    assert not left, f"left behind by the server:\n{out}"


def test_server_outlives_its_jobs_on_loopback_with_ray_auth(tiny_llama, tmp_path):
    home = tmp_path / "home"
    corpus = home / "corpora" / "tiny.txt"
    corpus.parent.mkdir(parents=True)
    corpus.write_text(
        "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(5000))
    )
    port = free_port()
    env = dict(os.environ, SAEFEAT_HOME=str(home), SAEFEAT_BOOTSTRAP_API_KEY=KEY,
               SAEFEAT_ALLOWED_MODELS=str(tiny_llama))  # fmt: skip
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
                 "SAEFEAT_RAY_ADDRESS", "SAEFEAT_DATABASE_URL"):  # fmt: skip
        env.pop(name, None)  # production defaults: token auth on, our own Ray
    log = (tmp_path / "serve.log").open("w")
    serve = [str(SAEFEAT), "serve", "--port", str(port)]
    # A session of its own: the test finds (and at the end kills) its Ray by it.
    proc = subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if client.get("/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.5)

        first = client.post("/v1/harvests", json=_spec(tiny_llama, corpus, 8))
        assert first.status_code == 202, first.text
        job = _wait_job(client, first.json()["job_id"], _finished)
        assert job["status"] == "succeeded", job["error"]
        done_at = time.monotonic()

        # Meanwhile: every listener of the server and its Ray is on loopback, and Ray
        # wants the token that only the server's data folder holds.
        listeners = _listeners(proc.pid)
        names = {name for _, name in listeners}
        assert {"gcs_server", "raylet"} <= names, listeners
        assert [x for x in listeners if not _loopback(x[0])] == []
        token = home / "ray_auth_token"
        assert token.stat().st_mode & 0o077 == 0
        gcs = next(addr for addr, name in listeners if name == "gcs_server")
        gcs = "127.0.0.1:" + gcs.rsplit(":", 1)[1]
        outsider = _outsider_output(gcs, env)
        assert "JOINED" not in outsider and "InvalidAuthToken" in outsider, outsider[-2000:]

        time.sleep(max(0.0, OUTLIVE_S - (time.monotonic() - done_at)))
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        assert client.get("/v1/health").status_code == 200
        second = client.post("/v1/harvests", json=_spec(tiny_llama, corpus, 12))
        job = _wait_job(client, second.json()["job_id"], _finished)
        assert job["status"] == "succeeded", job["error"]

        # SIGTERM while a job runs: it goes back to the queue for the next server.
        third = client.post("/v1/harvests", json=_spec(tiny_llama, corpus, 1200, 2))
        third_id = third.json()["job_id"]
        _wait_job(client, third_id, lambda j: j["progress_done"] > 0 or _finished(j))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        # A graceful stop, not Ray's crash handler, and it takes its Ray down with it:
        # no agent left orphaned.
        said = (tmp_path / "serve.log").read_text()
        assert "SIGTERM received" not in said, said[-3000:]
        _no_process_left(proc.pid)
        engine = create_engine(f"sqlite:///{home / 'catalog.db'}")
        with engine.connect() as c:
            row = c.execute(text("SELECT status, owner, lease_expires_at, attempts FROM jobs "
                                 "WHERE id = :id"), {"id": third_id}).one()  # fmt: skip
        engine.dispose()
        assert (row.status, row.owner, row.lease_expires_at) == ("queued", None, None)
        assert json.loads(row.attempts)[-1]["why"] == SHUTDOWN
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its Ray is left
        except ProcessLookupError:
            pass
        log.close()
