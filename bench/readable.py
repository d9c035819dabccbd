"""Features a researcher can read (issue 21): on an SAE indexed with the current code,
how true the output side is, how well explanations are told apart, whether examples are
clean and whether steering does what a feature's label says, fast enough.

    .venv/bin/python bench/readable.py                       # the demo SAE (built once,
        # cached under bench/.cache/readable: SmolLM2-135M, built-in corpus, 4,608 latents)
    .venv/bin/python bench/readable.py --corpus /usr/share/common-licenses   # another
        # corpus: its own cache folder, the same harvest/train/index settings as the demo
    .venv/bin/python bench/readable.py --smoke               # a crash check: a 1 x d_model
        # SAE on 2,048 tokens, 6 features (set SAEFEAT_HOME to a temporary folder)

An SAE indexed before this bench's code (no measured effects stored) is indexed again
first. The figures:

- tokenchange_vs_projection_overlap10: mean overlap of each feature's measured top-10
  ("makes more likely") with its raw direct projection's top-10 (a report, no target);
- fragment_share_top10_raw / _debiased / _measured: the largest share of features any one
  token is in the top 10 of (target for the de-biased projection: <= 0.01);
- auroc_own_vs_neighbour: per scorer, the AUROC of a feature's own explanation against its
  nearest decoder neighbour's on the feature's windows (target: best >= 0.75);
- scores_in_unit_interval: every stored score is in [0, 1];
- duplicate_top_windows: top-example windows stored twice for a feature (target 0);
- steer_concept_success: share of readable features whose clamp at the default strength
  raises their label tokens' probability (target >= 0.8);
- steer_tok_s_over_generate: steered tokens/s over plain generation (target >= 0.8).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
CACHE = Path(__file__).resolve().parent / ".cache"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _home(corpus: str | None) -> Path:
    if "SAEFEAT_HOME" in os.environ:
        return Path(os.environ["SAEFEAT_HOME"])
    name = "readable" if corpus is None else f"readable-{Path(corpus).name}"
    return CACHE / name


def build_sae(settings, tokens: int, corpus: str | None, smoke: bool) -> str:
    """The newest indexed SAE in the bench's home, or a fresh one with the demo's
    settings on `corpus` (None: the built-in corpus)."""
    from saefeat.demo import demo_specs
    from saefeat.pipeline import run_harvest, run_index, run_train
    from saefeat.specs import CorpusSource, IndexSpec
    from saefeat.storage.catalog import queries
    from saefeat.storage.catalog.db import catalog_session

    with catalog_session(settings) as s:
        for sae in reversed(queries.list_saes(s, limit=500).items):
            if queries.count_features(s, sae.id):
                return sae.id
    harvest, train = demo_specs(tokens)
    if corpus is not None:
        harvest = harvest.model_copy(update={"corpus": [CorpusSource(path=corpus)]})
    log(f"harvesting {tokens:,} tokens of {corpus or 'the built-in corpus'}")
    set_id = run_harvest(harvest, settings=settings).activation_set.id
    spec = train(set_id)
    if smoke:
        spec = type(spec)(**spec.model_dump() | {"expansion_factor": 1, "eval_ce_contexts": 0})
    log("training")
    sae_id = run_train(spec, settings=settings).sae_id
    log("indexing")
    run_index(IndexSpec(sae=sae_id), settings=settings)
    return sae_id


def ensure_current_index(settings, sae_id: str, force: bool) -> None:
    """Index again when asked or when the catalog holds no measured effects (an older
    index)."""
    from sqlalchemy import func, select

    from saefeat.pipeline import run_index
    from saefeat.specs import IndexSpec
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.models import Feature, TokenEffect

    with catalog_session(settings) as s:
        n = s.scalar(select(func.count()).select_from(TokenEffect).join(Feature)
                     .where(Feature.sae_id == sae_id))  # fmt: skip
    if force or not n:
        log("indexing again with the current code")
        run_index(IndexSpec(sae=sae_id), settings=settings)


def output_side(session, sae_id: str) -> dict:
    """Overlap of measured and raw lists; fragment shares of raw, de-biased, measured."""
    from sqlalchemy import select

    from saefeat.features.effects import fragment_share_top10, overlap_at_10
    from saefeat.storage.catalog.models import Feature, TokenEffect, VocabToken

    def lists(rows) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for feature, token in rows:
            out.setdefault(feature, []).append(token)
        return out

    ids = select(Feature.id).where(Feature.sae_id == sae_id)
    raw = lists(session.execute(
        select(VocabToken.feature_id, VocabToken.token_id)
        .where(VocabToken.feature_id.in_(ids), VocabToken.side == "top")
        .order_by(VocabToken.feature_id, VocabToken.rank)).all())  # fmt: skip

    def effects(method: str) -> dict[int, list[int]]:
        return lists(session.execute(
            select(TokenEffect.feature_id, TokenEffect.token_id)
            .where(TokenEffect.feature_id.in_(ids), TokenEffect.method == method,
                   TokenEffect.side == "up")
            .order_by(TokenEffect.feature_id, TokenEffect.rank)).all())  # fmt: skip

    measured, debiased = effects("measured"), effects("debiased")
    both = sorted(set(measured) & set(raw))
    return {
        "tokenchange_vs_projection_overlap10": round(
            overlap_at_10([measured[f] for f in both], [raw[f] for f in both]), 4
        ),
        "fragment_share_top10_raw": round(fragment_share_top10(list(raw.values())), 4),
        "fragment_share_top10_debiased": round(fragment_share_top10(list(debiased.values())), 4),
        "fragment_share_top10_measured": round(fragment_share_top10(list(measured.values())), 4),
        "features_with_measured_effect": len(measured),
    }


def sample_live(session, sae_id: str, n: int, seed: int = 0) -> list[int]:
    """n random features that fire and are not flagged as artifacts."""
    from sqlalchemy import select

    from saefeat.storage.catalog.models import Feature

    live = session.scalars(select(Feature.index).where(
        Feature.sae_id == sae_id, Feature.max_activation > 0,
        Feature.artifact.is_(None))).all()  # fmt: skip
    return sorted(random.Random(seed).sample(sorted(live), min(n, len(live))))


def explanations(settings, session, sae_id: str, features: list[int], smoke: bool) -> dict:
    """Explain the sample (the explain job's path) and check the scores."""
    from saefeat.interp.checks import own_vs_neighbour_auroc
    from saefeat.specs import ExplainSpec
    from saefeat.storage.catalog.explanations import scores_in_unit_interval
    from saefeat.workers.explain import run_explain

    pool = 32 if smoke else 256
    t0 = time.perf_counter()
    run_explain(ExplainSpec(sae=sae_id, features=features, pool_contexts=pool), settings=settings)
    explain_s = time.perf_counter() - t0
    log(f"explained {len(features)} features in {explain_s:.0f}s; checking own vs neighbour")
    aurocs = own_vs_neighbour_auroc(session, settings, sae_id, features, pool_contexts=pool)
    session.expire_all()
    return {
        "auroc_own_vs_neighbour": {k: round(v, 4) for k, v in aurocs.items()},
        "auroc_own_vs_neighbour_best": round(max(aurocs.values(), default=float("nan")), 4),
        "scores_in_unit_interval": scores_in_unit_interval(session, sae_id),
        "explain_seconds": round(explain_s, 1),
    }


def steering(session, sae_id: str, n: int, smoke: bool) -> dict:
    from saefeat.analysis.steer_eval import measure_steer_speed, steer_concept_success
    from saefeat.features import live
    from saefeat.storage.catalog import queries
    from saefeat.storage.catalog.set_registry import sae_model

    concept = steer_concept_success(session, sae_id, n=n, max_new_tokens=4 if smoke else 16)
    row = queries.get_sae(session, sae_id)
    lm, sae, lock = live.loaded(*sae_model(session, row), row.checkpoint_path)
    with lock:
        speed = measure_steer_speed(lm, sae, row.hook_name, n_tokens=8 if smoke else 32,
                                    repeats=2 if smoke else 5)  # fmt: skip
    return {
        "steer_concept_success": round(concept.share, 4),
        "steer_features_tried": len(concept.trials),
        "steer_tok_s_over_generate": round(speed.steer_tok_s_over_generate, 4),
        "steer_cold_over_generate": round(speed.cold_over_generate, 4),
        "plain_tok_s": round(speed.plain_tok_s, 1),
        "steered_tok_s": round(speed.steered_tok_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="a file or folder of text (default: built-in corpus)")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20, help="features sampled")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--reindex", action="store_true", help="index the SAE again first")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.features = 2_048, 6
    os.environ["SAEFEAT_HOME"] = str(_home(args.corpus))
    os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(Path.home() / ".cache/saefeat/models"))
    if args.corpus:
        os.environ.setdefault("SAEFEAT_CORPUS_ROOTS", json.dumps([args.corpus]))

    from saefeat.config import get_settings
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.example_search import duplicate_top_windows
    from saefeat.workers.runtime import ensure_ray

    settings = get_settings()
    ensure_ray(settings)
    sae_id = build_sae(settings, args.tokens, args.corpus, args.smoke)
    ensure_current_index(settings, sae_id, args.reindex)
    out: dict = {"sae": sae_id, "corpus": args.corpus or "builtin:python-docs"}
    with catalog_session(settings) as s:
        out |= output_side(s, sae_id)
        out["duplicate_top_windows"] = duplicate_top_windows(s, sae_id)
        features = sample_live(s, sae_id, args.features)
        log(f"sampled features {features}")
        out |= explanations(settings, s, sae_id, features, args.smoke)
        out |= steering(s, sae_id, args.features, args.smoke)
    log(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
