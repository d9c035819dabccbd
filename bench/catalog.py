"""The feature catalog at release size: HTTP latency on SQLite and PostgreSQL, and the
indexing throughput against the SAE forward alone.

    python bench/catalog.py            # 1,000,000 features x 20 examples
    python bench/catalog.py --quick    # 100,000 features

For each database: build a synthetic catalog (20 top examples of 17 tokens, 20 + 20
projection tokens, 10 neighbours and a histogram per feature, labels on 10% of the
features), serve it with uvicorn on 127.0.0.1 (a separate process), and time the feature
page, a filtered list, label search, token search and a label write with 1 and with 16
concurrent httpx clients (bounded request counts). Then the indexing ratio: tokens/s of
SAE encode + FeatureAccumulator.add (top-k, quantiles, histograms) over tokens/s of the
SAE encode alone, on the same batches in the same run.

The last line printed is one JSON object:
{"sqlite": {"feature_page_p95_ms": ..., ...}, "postgresql": {...}, "config": {...}}.
The p95s in it are the 16-client numbers; the 1-client numbers are in "by_clients".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAE_ID = "bench-sae"
WINDOW = 17  # 8 tokens either side of the focus token
N_EXAMPLES = 20
N_VOCAB = 20
N_NEIGHBOURS = 10
LABEL_FRACTION = 0.1
CHUNK = 10_000  # features generated and inserted at a time
HIST_EDGES = np.logspace(-4, 3, 57).round(6).tolist()
LABEL_WORDS = (
    "python code closing brackets string literal import module class def return loop "
    "comment indentation whitespace variable name number digit year month date time url "
    "html tag markdown header list item quote dialogue speaker question answer legal "
    "medical chemistry physics math equation integral sum matrix vector layer attention "
    "token subword prefix suffix plural verb noun adjective adverb negation comparison "
    "city country person organisation money currency percent unit measure recipe food"
).split()
SEARCH_WORDS = ["python", "brackets", "city OR country", '"string literal"', "math -physics"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- synthetic catalog ---------------------------------------------------------------


def synthetic_vocab(rng: np.random.Generator, size: int = 49_152) -> list[str]:
    """Token strings shaped like a byte-level BPE vocabulary: words, pieces, markers."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = []
    for i in range(size):
        piece = "".join(rng.choice(letters, size=int(rng.integers(1, 9))))
        out.append(("Ġ" if i % 3 == 0 else "") + piece)
    return list(dict.fromkeys(out))


def _feature_rows(rng, start: int, n: int) -> list[dict[str, Any]]:
    density = np.round(rng.beta(0.5, 200.0, size=n), 6)
    max_act = np.round(rng.gamma(2.0, 3.0, size=n), 4)
    mean_act = np.round(max_act * rng.uniform(0.1, 0.5, size=n), 4)
    counts = rng.integers(0, 5000, size=(n, 56))
    return [
        {
            "sae_id": SAE_ID,
            "index": start + i,
            "density": float(density[i]),
            "max_activation": float(max_act[i]),
            "mean_activation": float(mean_act[i]),
            "histogram": {"edges": HIST_EDGES, "counts": counts[i].tolist()},
        }
        for i in range(n)
    ]


def _example_rows(rng, ids: list[int], max_act: list[float], vocab: list[str]):
    n = len(ids) * N_EXAMPLES
    tokens = rng.integers(0, len(vocab), size=(n, WINDOW))
    values = np.round(rng.random((n, WINDOW)) * rng.random((n, 1)) * 3, 4)
    contexts = rng.integers(0, 1_000_000, size=n)
    positions = rng.integers(0, 128, size=n)
    rows = []
    for j in range(n):
        f, rank = divmod(j, N_EXAMPLES)
        peak = round(max_act[f] * (1 - rank / (2 * N_EXAMPLES)), 4)
        vals = values[j].tolist()
        vals[8] = peak
        toks = tokens[j].tolist()
        rows.append(
            {
                "feature_id": ids[f],
                "kind": "top",
                "rank": rank,
                "activation": peak,
                "context_index": int(contexts[j]),
                "position": int(positions[j]),
                "focus": 8,
                "token_ids": toks,
                "token_strs": [vocab[t] for t in toks],
                "values": vals,
            }
        )
    return rows


def _vocab_rows(rng, ids: list[int], vocab: list[str]):
    rows = []
    picks = rng.integers(0, len(vocab), size=(len(ids), 2 * N_VOCAB))
    values = np.round(np.sort(rng.uniform(0.3, 3.0, size=(len(ids), N_VOCAB)), axis=1), 4)
    for f, fid in enumerate(ids):
        for side, sign, offset in (("top", 1.0, 0), ("bottom", -1.0, N_VOCAB)):
            for rank in range(N_VOCAB):
                tok = int(picks[f, offset + rank])
                rows.append(
                    {
                        "feature_id": fid,
                        "side": side,
                        "rank": rank,
                        "token_id": tok,
                        "token_str": vocab[tok],
                        "value": sign * float(values[f, N_VOCAB - 1 - rank]),
                    }
                )
    return rows


def _neighbour_rows(rng, ids: list[int], all_ids: np.ndarray):
    near = rng.integers(0, len(all_ids), size=(len(ids), N_NEIGHBOURS))
    cos = np.round(np.sort(rng.uniform(0.1, 0.9, size=(len(ids), N_NEIGHBOURS)))[:, ::-1], 4)
    return [
        {
            "feature_id": fid,
            "rank": r,
            "neighbour_feature_id": int(all_ids[near[f, r]]),
            "cosine": float(cos[f, r]),
        }
        for f, fid in enumerate(ids)
        for r in range(N_NEIGHBOURS)
    ]


def _label_rows(rng, ids: np.ndarray) -> list[dict[str, Any]]:
    from saefeat.storage.catalog.models import utcnow

    chosen = rng.choice(ids, size=int(len(ids) * LABEL_FRACTION), replace=False)
    rows = []
    for fid in chosen.tolist():
        words = rng.choice(LABEL_WORDS, size=int(rng.integers(2, 7)))
        auto = rng.random() < 0.7
        rows.append(
            {
                "feature_id": fid,
                "text": " ".join(words),
                "source": "auto" if auto else "human",
                "author": "autointerp" if auto else "bench",
                "score": round(float(rng.random()), 3) if auto else None,
                "created_at": utcnow(),
            }
        )
    return rows


def build_catalog(url: str, n_features: int, seed: int = 0) -> str:
    """Create the schema and fill it; returns a label-scope API key."""
    from sqlalchemy import select, text

    from saefeat.storage.catalog.db import make_engine, make_sessionmaker, upgrade
    from saefeat.storage.catalog.keys import create_api_key
    from saefeat.storage.catalog.models import (
        Feature,
        FeatureExample,
        Label,
        Neighbour,
        VocabToken,
    )
    from saefeat.storage.catalog.registry import register_sae
    from saefeat.storage.catalog.writer import _bulk_insert

    rng = np.random.default_rng(seed)
    vocab = synthetic_vocab(rng)
    upgrade(url)
    engine = make_engine(url)
    t0 = time.perf_counter()
    with make_sessionmaker(engine)() as s:
        register_sae(s, sae_id=SAE_ID, name="bench", model_name="SmolLM2-135M-Instruct",
                     hook_name="blocks.15.hook_resid_post", architecture="topk", d_in=576,
                     d_sae=n_features, k=32)  # fmt: skip
        key = create_api_key(s, "bench", ["label"])
        s.commit()
        for start in range(0, n_features, CHUNK):
            _bulk_insert(s, Feature, _feature_rows(rng, start, min(CHUNK, n_features - start)))
            s.commit()
        all_ids = np.array(
            s.scalars(
                select(Feature.id).where(Feature.sae_id == SAE_ID).order_by(Feature.index)
            ).all()
        )
        max_acts = s.scalars(select(Feature.max_activation).order_by(Feature.index)).all()
        for start in range(0, n_features, CHUNK):
            ids = all_ids[start : start + CHUNK].tolist()
            acts = max_acts[start : start + CHUNK]
            _bulk_insert(s, FeatureExample, _example_rows(rng, ids, acts, vocab))
            _bulk_insert(s, VocabToken, _vocab_rows(rng, ids, vocab))
            _bulk_insert(s, Neighbour, _neighbour_rows(rng, ids, all_ids))
            s.commit()
            if (start // CHUNK) % 10 == 0:
                log(f"  {start + len(ids):,} features ({time.perf_counter() - t0:.0f} s)")
        _bulk_insert(s, Label, _label_rows(rng, all_ids))
        s.commit()
        # Fresh statistics, as after any big load, so the planners pick the indexes.
        s.execute(text("ANALYZE"))
        s.commit()
    engine.dispose()
    log(f"  built {n_features:,} features in {time.perf_counter() - t0:.0f} s")
    return key


# ---- serving and load ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(url: str, home: Path, workers: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, SAEFEAT_DATABASE_URL=url, SAEFEAT_HOME=str(home))
    command = [sys.executable, "-m", "uvicorn", "--factory", "saefeat.api.app:create_app",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("uvicorn did not come up in 60 s")


Request = Callable[[Any, random.Random], Any]


def scenarios(n_features: int, key: str, vocab: list[str]) -> dict[str, Request]:
    auth = {"Authorization": f"Bearer {key}"}

    def feature_page(client, rnd):
        return client.get(f"/saes/{SAE_ID}/features/{rnd.randrange(n_features)}")

    def filtered_list(client, rnd):
        low = rnd.choice([0.0, 0.001, 0.002])
        params = {"min_density": low, "max_density": low + 0.01, "labelled": "true",
                  "sort": "density", "limit": 50}  # fmt: skip
        return client.get(f"/v1/saes/{SAE_ID}/features", params=params)

    def label_search(client, rnd):
        params = {"q": rnd.choice(SEARCH_WORDS), "sae_id": SAE_ID, "limit": 20}
        return client.get("/v1/labels/search", params=params)

    def token_search(client, rnd):
        params = {"token": rnd.choice(vocab), "sae_id": SAE_ID, "limit": 20}
        return client.get("/v1/features/search", params=params)

    def label_write(client, rnd):
        index = rnd.randrange(n_features)
        body = {"text": f"bench label {rnd.randrange(10**6)}"}
        return client.post(f"/v1/saes/{SAE_ID}/features/{index}/labels", json=body, headers=auth)

    return {
        "feature_page": feature_page,
        "list": filtered_list,
        "label_search": label_search,
        "token_search": token_search,
        "label_write": label_write,
    }


def run_load(base: str, request: Request, clients: int, per_client: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client_loop(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(per_client):
                t = time.perf_counter()
                try:
                    response = request(client, rnd)
                    ok = response.status_code < 400
                except httpx.HTTPError:
                    ok = False
                elapsed = (time.perf_counter() - t) * 1000
                with lock:
                    latencies.append(elapsed)
                    errors[0] += not ok

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]).tolist()
    return {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "p99_ms": round(p99, 1),
            "requests": len(latencies), "errors": errors[0],
            "rps": round(len(latencies) / wall, 1)}  # fmt: skip


def bench_database(
    name: str, url: str, n_features: int, requests: int, workers: int, home: Path
) -> dict[str, Any]:
    log(f"{name}: building {n_features:,} features")
    t = time.perf_counter()
    key = build_catalog(url, n_features)
    build_s = time.perf_counter() - t
    vocab = synthetic_vocab(np.random.default_rng(0))[:2000]
    process, base = serve(url, home, workers)
    results: dict[str, Any] = {"build_s": round(build_s, 1), "by_clients": {}}
    try:
        import httpx

        httpx.get(f"{base}/saes/{SAE_ID}/features/0", timeout=60)  # warm the pool
        for clients in (1, 16):
            # 1 client: `requests` requests; 16 clients: 2 x `requests` in all.
            per_client = requests if clients == 1 else max(1, (2 * requests) // clients)
            row = {}
            for scenario, request in scenarios(n_features, key, vocab).items():
                row[scenario] = run_load(base, request, clients, per_client)
                log(f"  {clients:2d} clients {scenario:13s} {row[scenario]}")
            results["by_clients"][str(clients)] = row
    finally:
        process.terminate()
        process.wait(timeout=30)
    sixteen = results["by_clients"]["16"]
    for scenario in ("feature_page", "list", "label_search", "token_search", "label_write"):
        results[f"{scenario}_p95_ms"] = sixteen[scenario]["p95_ms"]
    results["errors"] = sum(
        r["errors"] for row in results["by_clients"].values() for r in row.values()
    )
    return results


# ---- indexing throughput ----------------------------------------------------------------


def index_ratio(n_batches: int, d_sae: int = 4608, d_in: int = 576) -> dict[str, Any]:
    """tokens/s of encode + accumulate over tokens/s of encode alone, same batches."""
    import torch

    from saefeat.features.accumulate import FeatureAccumulator
    from saefeat.sae import SAEConfig
    from saefeat.sae.topk import TopKSAE

    torch.manual_seed(0)
    ctx_len, contexts = 128, 32
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=32)).eval()
    # Inputs built from the dictionary's own atoms with heavy-tailed weights, so codes are
    # sparse and skewed as on real activations (pure noise would make every latent alike).
    atoms = sae.W_dec.detach()
    batches = []
    for _ in range(n_batches):
        n = contexts * ctx_len
        which = torch.randint(0, d_sae, (n, 16))
        weight = torch.distributions.Exponential(1.0).sample((n, 16)) ** 2
        batches.append((weight[:, :, None] * atoms[which]).sum(1) + 0.05 * torch.randn(n, d_in))

    def run(bookkeeping: bool) -> float:
        acc = FeatureAccumulator(d_sae, N_EXAMPLES, 8, n_quantile_bins=10, per_quantile_bin=5)
        t = time.perf_counter()
        with torch.inference_mode():
            for b, x in enumerate(batches):
                vals, idx = sae.encode(x)
                if bookkeeping:
                    acc.add(vals, idx, first_context=b * contexts, ctx_len=ctx_len)
        return time.perf_counter() - t

    run(False)  # warm-up
    forward = run(False)
    indexing = run(True)
    tokens = n_batches * contexts * ctx_len
    return {
        "tokens": tokens,
        "sae_forward_tok_s": round(tokens / forward),
        "index_tok_s": round(tokens / indexing),
        "ratio": round(forward / indexing, 3),
    }


# ---- main ------------------------------------------------------------------------------


def _postgres_url(base: str, database: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + database


def _pg_admin(url: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname="postgres", autocommit=True) as connection:  # fmt: skip
        connection.execute(sql)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 features")
    parser.add_argument("--features", type=int, help="override the feature count")
    parser.add_argument("--requests", type=int, help="requests per scenario and client count")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (see RESULTS.md)"
    )
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://saefeat_test:saefeat_test@127.0.0.1:5432/postgres",
        help="a role that may CREATE DATABASE; a throwaway database is made and dropped",
    )
    parser.add_argument("--index-batches", type=int, help="batches of 4096 tokens")
    args = parser.parse_args()
    n_features = args.features or (100_000 if args.quick else 1_000_000)
    requests = args.requests or (100 if args.quick else 200)
    index_batches = args.index_batches or (24 if args.quick else 64)

    out: dict[str, Any] = {}
    log(f"indexing ratio over {index_batches} batches of 4096 tokens")
    ratio = index_ratio(index_batches)
    log(f"  {ratio}")
    work = Path(tempfile.mkdtemp(prefix="saefeat-bench-catalog-"))
    try:
        for name in filter(None, args.databases.split(",")):
            if name == "sqlite":
                url = f"sqlite:///{work / 'catalog.db'}"
                out[name] = bench_database(name, url, n_features, requests, args.workers, work)
            elif name == "postgresql":
                database = f"saefeat_bench_{os.getpid()}"
                try:
                    _pg_admin(args.postgres, f"CREATE DATABASE {database}")
                except Exception as exc:  # noqa: BLE001 - report and go on with SQLite
                    out[name] = {"skipped": f"cannot create a database: {exc}"}
                    continue
                url = _postgres_url(args.postgres, database)
                try:
                    out[name] = bench_database(name, url, n_features, requests, args.workers, work)
                finally:
                    _pg_admin(args.postgres, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            out[name]["index_ratio_vs_sae_forward"] = ratio["ratio"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["config"] = {"features": n_features, "examples_per_feature": N_EXAMPLES,
                     "requests_per_client_count": requests, "uvicorn_workers": args.workers,
                     "index": ratio}  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
