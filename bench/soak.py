"""Many users at once on one server (issue 27): does anything fail for being busy, any
answer come back 5xx, reads slow down, memory grow, or a process outlive the server?

`saefeat serve` runs as a user runs it (a subprocess, its own local Ray) on a copy of
the readable bench's home (bench/.cache/readable: the demo's SAE on SmolLM2-135M, its
activation set and index; `python bench/readable.py` makes it). N clients, each a
person with an API key, for M minutes: each keeps at most one job of its own in flight
(a harvest, a training, an indexing, an explanation, a contrast or a pipeline, chosen at
random, small) and meanwhile reads feature pages and lists, writes labels and steers.
At the end every job is waited for, the server gets SIGTERM, and its session is looked
at for processes left behind.

    python bench/soak.py                 # 4 clients, 15 minutes
    python bench/soak.py --smoke         # 2 clients, 60 seconds, on a small SAE built first

Keys (the last line, one JSON object): jobs_failed_for_busy (target 0), jobs_failed
(0 among valid submissions), http_5xx (0), read_p95_ms_during (< 200), rss_growth_mb
(the server process, after warm-up to the end: report), orphans_after_stop (0); with
jobs_by_kind, requests and the failures' errors to read.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

CACHE = Path(__file__).resolve().parent / ".cache"
SOURCE_HOME = CACHE / "readable"
ADMIN = "sk-bench-soak-admin"
BUSY_WORDS = ("not up within", "busy", "free now", "cannot be scheduled")
MODEL = "smollm2-135m"
SMALL_HOOK = "blocks.3.hook_resid_post"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(sid)], capture_output=True,
                         text=True).stdout  # fmt: skip
    return [line.strip()[:120] for line in out.splitlines() if line.strip()]


class Server:
    def __init__(self, home: Path):
        self.home = home
        self.port = _free_port()
        env = dict(os.environ, SAEFEAT_HOME=str(home), SAEFEAT_BOOTSTRAP_API_KEY=ADMIN)
        for name in ("SAEFEAT_RAY_ADDRESS", "RAY_ADDRESS", "SAEFEAT_DATABASE_URL"):
            env.pop(name, None)
        self.log = (home / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("saefeat")), "serve", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        admin = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"saefeat serve exited: {self.tail()}")
            try:
                if admin.get("/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server never answered")
            time.sleep(0.3)
        admin.close()

    def tail(self) -> str:
        self.log.flush()
        return (self.home / "server.log").read_text(errors="replace")[-3000:]

    def stop(self) -> list[str]:
        """SIGTERM, then what is left of its session (Ray included) 30 s later."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 30
        while (left := _session_processes(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left, after counting it
        except ProcessLookupError:
            pass
        self.log.close()
        return left


def _new_key(server: Server, n: int) -> str:
    """A key of this user's own, made as an admin makes one (`saefeat keys create`)."""
    out = subprocess.run(
        [str(Path(sys.executable).with_name("saefeat")), "keys", "create", "--name", f"user{n}",
         *[a for scope in ("read", "label", "jobs", "explain") for a in ("--scope", scope)]],
        env=dict(os.environ, SAEFEAT_HOME=str(server.home)), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return re.search(r"sfk_[A-Za-z0-9_-]+", out.stdout + out.stderr).group(0)


class Tally:
    """What every client saw, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.five_xx: list[str] = []
        self.four_xx: list[str] = []  # a few, to read: a valid request should not get one
        self.reads_ms: list[float] = []
        self.jobs: dict[str, str] = {}  # job id -> kind

    def saw(self, what: str, response: httpx.Response, ms: float | None = None) -> None:
        with self.lock:
            self.statuses[response.status_code] += 1
            if 400 <= response.status_code < 500 and len(self.four_xx) < 10:
                self.four_xx.append(f"{what}: {response.status_code} {response.text[:200]}")
            if response.status_code >= 500:
                self.five_xx.append(f"{what}: {response.status_code} {response.text[:200]}")
            if ms is not None and response.status_code == 200:
                self.reads_ms.append(ms)


class Client:
    """One person: a key of their own, one job at a time, reads and writes meanwhile."""

    def __init__(self, n: int, server: Server, sae: str, d_sae: int, sets: dict,
                 tally: Tally, seed: int):  # fmt: skip
        self.n, self.sae, self.d_sae, self.sets, self.tally = n, sae, d_sae, sets, tally
        self.rng = random.Random(seed)
        key = _new_key(server, n)
        self.http = httpx.Client(base_url=server.url, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        self.job: str | None = None
        self.trained: list[str] = []

    # ---- what a person does between jobs ----------------------------------------------

    def read(self) -> None:
        i = self.rng.randrange(self.d_sae)
        sae = self.sae
        path = self.rng.choice([
            f"/saes/{sae}/features/{i}", f"/v1/saes/{sae}/features/{i}",
            f"/v1/saes/{sae}/features?limit=20&sort=density", "/v1/jobs?limit=20",
            f"/v1/features/search?token=%20the&sae_id={sae}"])  # fmt: skip
        t = time.perf_counter()
        r = self.http.get(path)
        self.tally.saw(f"GET {path}", r, (time.perf_counter() - t) * 1000)

    def label(self) -> None:
        i = self.rng.randrange(self.d_sae)
        text = f"user {self.n}'s label {self.rng.random():.6f}"
        r = self.http.post(f"/v1/saes/{self.sae}/features/{i}/labels", json={"text": text})
        self.tally.saw("POST label", r)

    def steer(self) -> None:
        i = self.rng.randrange(self.d_sae)
        r = self.http.post(f"/v1/saes/{self.sae}/steer", json={
            "prompt": self.rng.choice(["The story begins", "def main():", "I think that"]),
            "features": [{"index": i, "strength": 4.0}], "method": "clamp",
            "max_new_tokens": 8})  # fmt: skip
        self.tally.saw("POST steer", r)

    # ---- jobs -------------------------------------------------------------------------

    def submit(self) -> None:
        kinds = ["harvest", "train", "explain", "contrast", "pipeline", "index"]
        kind = self.rng.choices(kinds, weights=[3, 2, 3, 1, 1, 1])[0]
        if kind == "index" and not self.trained:
            kind = "train"
        path, body = getattr(self, f"_{kind}")()
        r = self.http.post(path, json=body)
        self.tally.saw(f"POST {path}", r)
        if r.status_code == 202:
            self.job = r.json()["job_id"]
            with self.tally.lock:
                self.tally.jobs[self.job] = kind
        else:
            log(f"client {self.n}: {kind} refused {r.status_code}: {r.text[:300]}")

    def _harvest(self):
        budget = self.rng.choice([1024, 1536, 2048, 2560])
        return "/v1/harvests", {
            "model": MODEL,
            "hooks": [SMALL_HOOK],
            "ctx_len": 64,
            "corpus": ["builtin:python-docs"],
            "token_budget": budget,
        }

    def _train(self):
        return "/v1/trainings", {"specs": [{
            "activation_set": self.sets["demo"], "d_sae": 256, "epochs": 0.05,
            "architecture": {"name": "topk", "k": 8}, "eval_ce_contexts": 0,
            "seed": self.rng.randrange(10**6)}], "device": "cpu"}  # fmt: skip

    def _index(self):
        sae = self.rng.choice(self.trained)
        return "/v1/indexings", {
            "sae": sae,
            "umap": False,
            "n_examples": 5,
            "n_quantile_bins": 2,
            "per_quantile_bin": 1,
        }

    def _explain(self):
        features = self.rng.sample(range(self.d_sae), 2)
        return f"/v1/saes/{self.sae}/explanations", {"features": features, "pool_contexts": 32}

    def _contrast(self):
        budget = self.rng.choice([1024, 1536])
        return "/v1/contrasts", {
            "sae": self.sae,
            "a_corpus": [{"path": self.sets["a"]}],
            "b_corpus": [{"path": self.sets["b"]}],
            "token_budget": budget,
        }

    def _pipeline(self):
        budget = self.rng.choice([1024, 2048])
        return "/v1/pipelines", {
            "stages": ["harvest", "train", "index"],
            "harvest": {"model": MODEL, "hooks": [SMALL_HOOK], "ctx_len": 64,
                        "corpus": ["builtin:python-docs"], "token_budget": budget},
            "train": {"d_sae": 128, "k": 8, "epochs": 1, "eval_ce_contexts": 0,
                      "seed": self.rng.randrange(10**6)},
            "index": {"umap": False, "n_examples": 5, "n_quantile_bins": 2,
                      "per_quantile_bin": 1}, "device": "cpu"}  # fmt: skip

    def job_done(self) -> bool:
        r = self.http.get(f"/v1/jobs/{self.job}")
        self.tally.saw("GET job", r)
        if r.status_code != 200:
            return False
        job = r.json()
        if job["status"] in ("queued", "running"):
            return False
        if job["kind"] == "train" and job["status"] == "succeeded":
            spec = job.get("spec") or {}
            from saefeat.specs import TrainJobSpec

            self.trained += TrainJobSpec.model_validate(spec).sae_ids()
        return True

    def run(self, until: float) -> None:
        while time.monotonic() < until:
            if self.job is None or self.job_done():
                self.job = None
                self.submit()
            action = self.rng.choices([self.read, self.label, self.steer], weights=[14, 4, 1])[0]
            try:
                action()
            except httpx.TransportError as e:
                with self.tally.lock:
                    self.tally.five_xx.append(f"transport: {e}")
            time.sleep(self.rng.uniform(0.1, 0.4))

    def finish(self, deadline: float) -> None:
        while self.job is not None and time.monotonic() < deadline:
            if self.job_done():
                self.job = None
            else:
                time.sleep(2)


def _corpora(home: Path) -> dict[str, str]:
    """Two small plain-text corpora under the server's corpus root, for contrasts."""
    root = home / "corpora"
    root.mkdir(exist_ok=True)
    rng = random.Random(0)
    words_a = "the river flows past the old mill where children play in summer".split()
    words_b = "def return import class self lambda yield async await print".split()
    out = {}
    for side, words in (("a", words_a), ("b", words_b)):
        paras = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60)))
                 for _ in range(80)]  # fmt: skip
        path = root / f"soak-{side}.txt"
        path.write_text("\n\n".join(paras))
        out[side] = str(path)
    return out


# Builds a small indexed SAE in $SAEFEAT_HOME with the readable bench's own code.
BUILD = """
import sys
sys.path.insert(0, sys.argv[1])
import readable
from saefeat.config import get_settings
from saefeat.workers.runtime import ensure_ray
settings = get_settings()
ensure_ray(settings)
readable.build_sae(settings, 2048, None, True)
"""


def _source_home(smoke: bool) -> Path:
    """The readable bench's home (the demo's SAE); for --smoke, or without it, a small
    SAE built first (2,048 tokens, the demo's specs at 1 x d_model) in a home of its own,
    which the soak then uses (the catalog names its SAE's checkpoint by that path)."""
    if not smoke and (SOURCE_HOME / "catalog.db").is_file():
        return SOURCE_HOME
    if not smoke:
        log(f"no {SOURCE_HOME} (`python bench/readable.py` makes it): a small SAE instead")
    home = Path(tempfile.mkdtemp(prefix="saefeat-soak-source-"))
    env = dict(os.environ, SAEFEAT_HOME=str(home), RAY_AUTH_MODE="disabled")
    env.pop("SAEFEAT_RAY_ADDRESS", None)
    subprocess.run([sys.executable, "-c", BUILD, str(Path(__file__).resolve().parent)],
                   env=env, check=True)  # fmt: skip
    return home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--smoke", action="store_true", help="2 clients, 60 seconds, a small SAE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the server's home (its log)")
    args = ap.parse_args()
    if args.smoke:
        args.clients, args.minutes = 2, 1.0
    home = _source_home(args.smoke)
    if home == SOURCE_HOME:  # a copy: the soak's jobs write into its home
        home = Path(tempfile.mkdtemp(prefix="saefeat-soak-"))
        shutil.copytree(SOURCE_HOME, home, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.migrate-lock"))  # fmt: skip
    sets = _corpora(home)
    import sqlite3

    db = sqlite3.connect(home / "catalog.db")
    sae, d_sae = db.execute("SELECT id, d_sae FROM saes ORDER BY created_at DESC").fetchone()
    sets["demo"] = db.execute("SELECT id FROM activation_sets").fetchone()[0]
    db.close()
    log(f"home {home}; SAE {sae} ({d_sae} features), set {sets['demo']}")

    server = Server(home)
    tally = Tally()
    clients = [Client(i, server, sae, d_sae, sets, tally, args.seed * 100 + i)
               for i in range(args.clients)]  # fmt: skip
    for c in clients:  # warm-up, off the record: the first page, model and SAE loads
        c.http.get(f"/saes/{sae}/features/0")
    clients[0].steer()
    tally.reads_ms.clear()
    rss_start = _rss_mb(server.proc.pid)
    log(f"{args.clients} clients for {args.minutes:g} min; server RSS {rss_start:.0f} MB")

    until = time.monotonic() + args.minutes * 60
    threads = [threading.Thread(target=c.run, args=(until,)) for c in clients]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(30)
        with tally.lock:
            log(
                f"requests {sum(tally.statuses.values())}, jobs {len(tally.jobs)}, "
                f"5xx {len(tally.five_xx)}, RSS {_rss_mb(server.proc.pid):.0f} MB"
            )
    for t in threads:
        t.join()
    reads_during = list(tally.reads_ms)
    rss_end = _rss_mb(server.proc.pid)
    log("soak over; waiting for the jobs still queued or running")
    finish_by = time.monotonic() + 900
    for c in clients:
        c.finish(finish_by)

    admin = httpx.Client(base_url=server.url, timeout=60,
                         headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
    ended = {job_id: admin.get(f"/v1/jobs/{job_id}").json() for job_id in tally.jobs}
    admin.close()
    failed = {i: j for i, j in ended.items() if j["status"] != "succeeded"}
    busy = {i: j for i, j in failed.items()
            if any(w in (j.get("error") or "") for w in BUSY_WORDS)}  # fmt: skip
    left = server.stop()
    by_kind = Counter(tally.jobs.values())
    for job_id, job in failed.items():
        log(f"job {job_id} ({job['kind']}) {job['status']}: {(job.get('error') or '')[:300]}")
    for line in tally.four_xx:
        log(f"4xx: {line}")
    for line in tally.five_xx[:10]:
        log(f"5xx: {line}")
    for line in left:
        log(f"left behind: {line}")
    median = statistics.median(reads_during) if reads_during else None
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    p95 = statistics.quantiles(reads_during, n=20)[-1] if len(reads_during) > 20 else None
    print(json.dumps({
        "clients": args.clients, "minutes": args.minutes,
        "jobs_submitted": len(tally.jobs), "jobs_by_kind": dict(by_kind),
        "jobs_failed_for_busy": len(busy), "jobs_failed": len(failed),
        "http_5xx": len(tally.five_xx), "requests": sum(tally.statuses.values()),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "reads": len(reads_during),
        "read_p95_ms_during": None if p95 is None else round(p95, 1),
        "read_median_ms_during": None if median is None else round(median, 1),
        "rss_start_mb": round(rss_start), "rss_end_mb": round(rss_end),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "orphans_after_stop": len(left),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
