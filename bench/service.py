"""The pipeline as a service against the same work in-process.

(a) in-process: harvest -> train -> index by saefeat.pipeline's run_harvest, run_train
    and run_index (what the CLI's commands run) on a fresh SAEFEAT_HOME, Ray already
    started;
(b) over HTTP: the same three specs as one POST /v1/pipelines to `saefeat serve` (its own
    fresh home, its own local Ray, started before the clock), timed from the POST to the
    pipeline's end, while a client reads feature pages of the SAE (a) made (its catalog
    is copied into (b)'s home) one after another, 0.1 s apart. (b) trains with seed 1, so
    its SAE is another one than (a)'s and no stage of it is reused from that catalog.

    python bench/service.py            # SmolLM2-135M, built-in corpus, 20k tokens
    python bench/service.py --smoke    # 1,024 tokens, a 1 x d_model SAE: a crash check

Targets: pipeline_overhead_ratio = (b) / (a) <= 1.15; api_p95_ms_during_pipeline < 100.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

KEY = "sk-bench-service"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def specs(tokens: int, expansion: int | None = None):
    """The demo's specs at `tokens`; `expansion` overrides its SAE width (the smoke run)."""
    from saefeat.demo import demo_specs
    from saefeat.specs import IndexSpec

    harvest, train = demo_specs(tokens)
    train_spec = train(harvest.set_id())
    if expansion is not None:  # the smoke run: no CE evaluation either
        smoke = {"expansion_factor": expansion, "eval_ce_contexts": 0}
        train_spec = type(train_spec)(**(train_spec.model_dump() | smoke))
    return harvest, train_spec, IndexSpec(sae="placeholder")


def in_process(home: Path, tokens: int, expansion: int | None) -> tuple[float, str]:
    os.environ["SAEFEAT_HOME"] = str(home)
    from saefeat.config import get_settings

    get_settings.cache_clear()
    from saefeat.pipeline import run_harvest, run_index, run_train
    from saefeat.workers.runtime import ensure_ray

    settings = get_settings()
    ensure_ray(settings)
    harvest, train, index = specs(tokens, expansion)
    t0 = time.perf_counter()
    run_harvest(harvest, settings=settings)
    sae_id = run_train(train, settings=settings).sae_id
    run_index(index.model_copy(update={"sae": sae_id}), settings=settings)
    seconds = time.perf_counter() - t0
    import ray

    ray.shutdown()  # the server starts its own; one Ray at a time on this machine
    return seconds, sae_id


def over_http(
    home: Path, tokens: int, expansion: int | None, sae_id: str, d_sae: int
) -> tuple[float, list[float]]:
    import httpx

    harvest, train, index = specs(tokens, expansion)
    body = {
        "harvest": harvest.model_dump(mode="json"),
        # Seed 1: the same work as (a), another SAE id than the copied catalog's.
        "train": train.model_dump(mode="json", exclude={"activation_set"}) | {"seed": 1},
        "index": index.model_dump(mode="json", exclude={"sae"}),
    }
    port = _free_port()
    env = dict(os.environ, SAEFEAT_HOME=str(home), SAEFEAT_BOOTSTRAP_API_KEY=KEY)
    env.pop("SAEFEAT_RAY_ADDRESS", None)
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("saefeat")), "serve", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    latencies: list[float] = []

    def alive() -> None:
        if server.poll() is not None:
            log.close()
            tail = (home / "server.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"saefeat serve exited with {server.returncode}:\n{tail}")

    try:
        while True:
            alive()
            try:
                if client.get("/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        client.get(f"/saes/{sae_id}/features/0")  # the first page load, off the clock
        running = threading.Event()
        running.set()

        def read_pages() -> None:
            reader = httpx.Client(base_url=client.base_url, timeout=60)
            i = 0
            while running.is_set():
                t = time.perf_counter()
                r = reader.get(f"/saes/{sae_id}/features/{i % d_sae}")
                if r.status_code == 200:
                    latencies.append((time.perf_counter() - t) * 1000)
                i += 97
                time.sleep(0.1)

        pages = threading.Thread(target=read_pages, daemon=True)
        t0 = time.perf_counter()
        r = client.post("/v1/pipelines", json=body)
        if r.is_error:
            alive()
            log.flush()
            tail = (home / "server.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"POST /v1/pipelines: {r.status_code} {r.text[:1000]}\n{tail}")
        job_id = r.json()["job_id"]
        pages.start()
        while True:
            alive()
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(0.5)
        seconds = time.perf_counter() - t0
        running.clear()
        pages.join()
        if job["status"] != "succeeded" or job.get("error"):  # error: a note of reuse
            raise SystemExit(f"pipeline {job['status']}: {job.get('error')}")
        return seconds, latencies
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=None, help="default 20,000 (smoke: 1,024)")
    ap.add_argument("--smoke", action="store_true",
                    help="a crash check: 1,024 tokens and an SAE as wide as the model")  # fmt: skip
    args = ap.parse_args()
    args.tokens = args.tokens or (1024 if args.smoke else 20_000)
    expansion = 1 if args.smoke else None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Both homes load the embedded model from one converted copy.
    os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(Path.home() / ".cache/saefeat/models"))
    root = Path(tempfile.mkdtemp(prefix="bench-service-"))
    try:
        local_s, sae_id = in_process(root / "local", args.tokens, expansion)
        import sqlite3

        d_sae = sqlite3.connect(root / "local" / "catalog.db").execute(
            "select d_sae from saes where id = ?", (sae_id,)).fetchone()[0]  # fmt: skip
        (root / "served").mkdir()
        shutil.copy(root / "local" / "catalog.db", root / "served" / "catalog.db")
        http_s, lat = over_http(root / "served", args.tokens, expansion, sae_id, d_sae)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lat.sort()
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None
    pages = f"p50 {lat[len(lat) // 2]:.1f} ms, p95 {p95:.1f} ms" if lat else "none answered"
    print(f"in-process {local_s:.1f}s, over HTTP {http_s:.1f}s; {len(lat)} feature pages, "
          f"{pages}", file=sys.stderr)  # fmt: skip
    print(json.dumps({
        "tokens": args.tokens,
        "in_process_s": round(local_s, 2),
        "http_pipeline_s": round(http_s, 2),
        "pipeline_overhead_ratio": round(http_s / local_s, 3),
        "api_p95_ms_during_pipeline": round(p95, 1) if p95 is not None else None,
        "feature_page_requests": len(lat),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
