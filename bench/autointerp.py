"""Automatic interpretation on the demo SAE: can the no-judge scores tell a feature's own
explanation from another feature's?

Builds (once, cached under bench/.cache/autointerp) the demo SAE: SmolLM2-135M, built-in
corpus, d_sae 4,608, k 32. Samples 200 live features evenly across densities, explains
them with the offline explainer and scores them with the embedding and activation scorers
through the real job path (run_explain: Ray tasks, catalog writes) on a fresh copy of the
catalog, then scores each feature against a shuffled explanation (another sampled
feature's) on the same pool and windows. With --judge and llama-cpp-python installed it
also scores detection with SmolLM2-135M itself as the judge (llama.cpp's server).

    .venv/bin/python bench/autointerp.py [--features 200] [--judge 20]
    .venv/bin/python bench/autointerp.py --smoke   # a crash check: a 1 x d_model SAE on
        # 2,048 tokens, 8 features, a pool of 64 contexts, no judge (set SAEFEAT_HOME to a
        # temporary folder, or it builds that SAE into the bench's cache)

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
CACHE = Path(__file__).resolve().parent / ".cache" / "autointerp"
os.environ.setdefault("SAEFEAT_HOME", str(CACHE))
os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(Path.home() / ".cache" / "saefeat" / "models"))

import numpy as np  # noqa: E402
from sqlalchemy import text  # noqa: E402

from saefeat.config import Settings, get_settings  # noqa: E402
from saefeat.interp.explainers import OfflineExplainer  # noqa: E402
from saefeat.interp.metrics import auroc  # noqa: E402
from saefeat.interp.scorers import NotScorable, make_scorers  # noqa: E402
from saefeat.specs import ExplainSpec  # noqa: E402
from saefeat.storage.catalog import explanations, queries  # noqa: E402
from saefeat.storage.catalog.db import catalog_session  # noqa: E402

DEMO_FEATURES = 4608


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def demo_sae(settings: Settings, tokens: int = 100_000, smoke: bool = False) -> str:
    """The newest indexed SAE in the bench catalog, or a fresh demo run on `tokens` (the
    smoke run's: as wide as the model, no CE evaluation)."""
    with catalog_session(settings) as s:
        for sae in reversed(queries.list_saes(s, limit=500).items):
            if queries.count_features(s, sae.id):
                return sae.id
    from saefeat.demo import run_demo
    from saefeat.pipeline import run_harvest, run_index, run_train

    def train(spec):
        if smoke:
            spec = type(spec)(**spec.model_dump() | {"expansion_factor": 1, "eval_ce_contexts": 0})
        return run_train(spec, settings=settings)

    log("building the demo SAE (harvest, train, index)")
    return run_demo(
        tokens=tokens,
        harvest=lambda spec: run_harvest(spec, settings=settings),
        train=train,
        index=lambda spec: run_index(spec, settings=settings),
    )


def sample_features(settings: Settings, sae_id: str, n: int) -> list[int]:
    """n live features evenly spaced in density order."""
    with catalog_session(settings) as s:
        page = queries.list_features(s, sae_id, sort="density", order="asc", min_density=1e-9,
                                     limit=queries.MAX_PAGE)  # fmt: skip
        rows = list(page.items)
        while page.next_cursor:
            page = queries.list_features(s, sae_id, sort="density", order="asc",
                                         min_density=1e-9, limit=queries.MAX_PAGE,
                                         cursor=page.next_cursor)  # fmt: skip
            rows += page.items
    picks = np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)
    return sorted({rows[i].index for i in picks})


def fresh_catalog(settings: Settings) -> Settings:
    """A copy of the bench catalog, so every run explains from scratch."""
    src = Path(settings.db_url.removeprefix("sqlite:///"))
    dst = Path(tempfile.mkdtemp(prefix="autointerp-")) / "catalog.db"
    shutil.copyfile(src, dst)
    fresh = settings.model_copy(update={"database_url": f"sqlite:///{dst}"})
    with catalog_session(fresh) as s:  # earlier runs' explanations would be skipped
        s.execute(text("DELETE FROM labels WHERE source = 'auto'"))
        s.commit()
    return fresh


def shuffled_scores(settings, spec, true_text: dict[int, str]) -> dict[str, list]:
    """Each feature scored against another sampled feature's explanation (a rotation of
    the sampled list: never its own), with the job's own evidence and pool."""
    from saefeat.interp.catalog_io import prepare
    from saefeat.interp.encoder import sentence_encoder
    from saefeat.interp.scorers import EmbeddingCache

    plan = prepare(spec, settings, OfflineExplainer())  # nothing skipped: a fresh name
    plan.todo = sorted(true_text)
    pool = plan.build_pool(settings)
    with catalog_session(settings) as s:
        evidence = {ev.index: ev for ev in plan.load_evidence(s, plan.todo)}
    embed = EmbeddingCache(sentence_encoder())
    scorers = make_scorers(["embedding", "activation"], embed=embed, client=None)
    order = plan.todo
    other = {i: true_text[order[(k + len(order) // 2) % len(order)]] for k, i in enumerate(order)}
    out: dict[str, list] = {"embedding": [], "activation": []}
    for i in order:
        for scorer in scorers:
            try:
                out[scorer.name].append((i, scorer.score(other[i], evidence[i], pool).value))
            except NotScorable:
                pass
    return out, pool, evidence


def judge_detection(settings, true_text, evidence, pool, n_features: int) -> dict:
    """Detection with SmolLM2-135M as the judge, over llama.cpp's server."""
    import socket
    import subprocess
    import sys

    import httpx

    from saefeat.interp.judge import DetectionScorer
    from saefeat.interp.llm import LLMClient
    from saefeat.lm import embedded_model_file

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_file()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--logits_all", "true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/v1"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        client = LLMClient(base, "smollm2-135m", timeout_s=120)
        scorer = DetectionScorer(client)
        acc, aucs, t0 = [], [], time.perf_counter()
        for i in sorted(true_text)[:: max(1, len(true_text) // n_features)][:n_features]:
            try:
                score = scorer.score(true_text[i], evidence[i], pool)
            except Exception as e:  # noqa: BLE001 - counted, reported
                log(f"detection failed on feature {i}: {e}")
                continue
            acc.append(score.value)
            if "auroc" in score.details:
                aucs.append(score.details["auroc"])
        return {
            "detection_balanced_accuracy_smollm2": float(np.mean(acc)) if acc else None,
            "detection_auroc_smollm2": float(np.mean(aucs)) if aucs else None,
            "detection_features": len(acc),
            "detection_seconds": round(time.perf_counter() - t0, 1),
        }
    finally:
        server.terminate()
        server.wait(30)


def explain_sample(base: Settings, sae_id: str, n_features: int, pool_args: dict) -> tuple:
    """n_features of the SAE sampled evenly by density, explained and scored through
    run_explain on a fresh copy of the catalog, then scored against shuffled explanations:
    (the summary this bench prints, less the judge's; (settings, true_text, evidence, pool)
    for the judge)."""
    from saefeat.workers.explain import run_explain

    sample = sample_features(base, sae_id, n_features)
    settings = fresh_catalog(base)
    spec = ExplainSpec(
        sae=sae_id,
        features=sample,
        explainer="offline",
        scorers=["embedding", "activation"],
        **pool_args,
    )
    log(f"explaining {len(sample)} features of {sae_id}")
    t0 = time.perf_counter()
    result = run_explain(spec, settings=settings)
    seconds = time.perf_counter() - t0
    log(result.summary())

    true_text, true_scores = {}, {"embedding": {}, "activation": {}}
    with catalog_session(settings) as s:
        for i in sample:
            fid = queries.get_feature(s, sae_id, i).id
            rows = explanations.feature_explanations(s, fid)
            if rows:
                true_text[i] = rows[0].text
                for sc in rows[0].scores:
                    true_scores[sc.type][i] = sc.value
    log("scoring shuffled explanations")
    shuffled, pool, evidence = shuffled_scores(settings, spec, true_text)

    out: dict = {"sae": sae_id, "features": len(sample), "explained": result.explained,
                 "failed": len(result.failed), "seconds": round(seconds, 1)}  # fmt: skip
    # The pool is built once per job whatever its size; the rest grows with the features.
    per_min = result.explained / ((seconds - result.pool_seconds) / 60)
    out["pool_seconds"] = round(result.pool_seconds, 1)
    out["features_per_min_cpu"] = round(per_min, 1)
    out["minutes_for_all_demo_features"] = round(
        result.pool_seconds / 60 + DEMO_FEATURES / per_min, 1
    )
    for kind in ("embedding", "activation"):
        mine = true_scores[kind]
        pairs = [(mine[i], v) for i, v in shuffled[kind] if i in mine]
        own, other = [p[0] for p in pairs], [p[1] for p in pairs]
        out[f"auroc_true_vs_shuffled_{kind}"] = round(auroc(own, other), 4) if pairs else None
        out[f"mean_score_{kind}"] = round(float(np.mean(list(mine.values()))), 4) if mine else None
        out[f"mean_score_shuffled_{kind}"] = round(float(np.mean(other)), 4) if other else None
    return out, (settings, true_text, evidence, pool)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, default=200)
    parser.add_argument("--judge", type=int, default=20, help="features for detection; 0: skip")
    parser.add_argument("--smoke", action="store_true", help="a crash check (see above)")
    args = parser.parse_args()
    demo_tokens, pool = 100_000, {}
    if args.smoke:
        args.features, args.judge, demo_tokens, pool = 8, 0, 2048, {"pool_contexts": 64}

    base = get_settings()
    sae_id = demo_sae(base, demo_tokens, smoke=args.smoke)
    out, (settings, true_text, evidence, pool) = explain_sample(base, sae_id, args.features, pool)
    if args.judge:
        try:
            import llama_cpp  # noqa: F401

            log(f"detection with the SmolLM2 judge on {args.judge} features")
            out |= judge_detection(settings, true_text, evidence, pool, args.judge)
        except ImportError:
            out["detection_balanced_accuracy_smollm2"] = "skipped: llama-cpp-python missing"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
