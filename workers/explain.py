"""The explain job: explain and score features of an indexed SAE, in Ray tasks of
`batch_features` features each, writing each feature's label and scores to the catalog
as its batch returns.

A feature is written whole or not at all: when its explainer or a scorer fails (an
unreachable endpoint, an unreadable answer) its error is recorded on the result and
nothing of it is stored; the job goes on. A rerun skips the features already explained by
the same explainer and prompt version, so a cancelled or failed job resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from saefeat.config import Settings, get_settings
from saefeat.errors import SaefeatError
from saefeat.interp.catalog_io import FeatureOutcome
from saefeat.interp.evidence import FeatureEvidence
from saefeat.interp.explainers import Explainer, make_explainer, query_text
from saefeat.interp.llm import LLMClient
from saefeat.interp.pool import ScoringPool
from saefeat.interp.scorers import NotScorable, check_judges
from saefeat.specs import ExplainSpec
from saefeat.workers.job_progress import Progress, ShouldStop
from saefeat.workers.runtime import ensure_ray


@dataclass
class ExplainResult:
    sae: str
    explainer: str
    prompt_version: str
    explained: int = 0
    skipped_existing: int = 0  # explained before by the same explainer + prompt
    skipped_dead: int = 0  # no examples: never fired on the activation set
    failed: dict[int, str] = field(default_factory=dict)  # feature index -> error
    cancelled: bool = False
    seconds: float = 0.0
    pool_seconds: float = 0.0  # of `seconds`: building the scoring pool (once per job)
    mean_scores: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        means = ", ".join(f"{k} {v:.3f}" for k, v in self.mean_scores.items())
        line = (
            f"explained {self.explained} feature(s) of {self.sae} with {self.explainer} "
            f"({self.prompt_version}) in {self.seconds:.1f}s; {self.skipped_existing} already "
            f"explained, {self.skipped_dead} never fire, {len(self.failed)} failed"
        )
        return line + (f"; mean scores: {means}" if means else "")


@dataclass
class _Job:
    """What a Ray task needs besides its features (small; the pool travels by ref)."""

    explainer: str
    scorers: list[str]
    llm: dict[str, Any] | None
    seed: int


def _client(llm: dict[str, Any] | None) -> LLMClient | None:
    return LLMClient(**llm) if llm else None


def explain_batch(
    job: _Job, evidence: list[FeatureEvidence], pool: ScoringPool
) -> list[FeatureOutcome]:
    """Explain and score some features (one Ray task). Never raises for one feature."""
    from saefeat.interp.encoder import sentence_encoder
    from saefeat.interp.scorers import NO_JUDGE, EmbeddingCache, make_scorers

    client = _client(job.llm)
    try:
        explainer = make_explainer(job.explainer, client)
        needs_encoder = any(n in NO_JUDGE for n in job.scorers)
        embed = EmbeddingCache(sentence_encoder()) if needs_encoder else None
        scorers = make_scorers(job.scorers, embed=embed, client=client, seed=job.seed)
        texts: dict[int, str] = {}
        out: dict[int, FeatureOutcome] = {}
        for ev in evidence:
            try:
                texts[ev.index] = explainer.explain(ev)
            except Exception as e:  # noqa: BLE001 - recorded against the feature
                out[ev.index] = FeatureOutcome(ev.index, error=f"explainer: {_why(e)}")
        if embed is not None:  # encode the batch's texts together: much faster than singly
            held = [w.text for ev in evidence for w in ev.held_out[:10]]
            embed.prime([query_text(t) for t in texts.values()] + held)  # what scorers read
        for ev in evidence:
            if ev.index in out:
                continue
            outcome = FeatureOutcome(ev.index, text=texts[ev.index])
            outcome.explained_from = [w.brief() for w in ev.explain]
            for scorer in scorers:
                try:
                    outcome.scores.append(scorer.score(outcome.text, ev, pool))
                except NotScorable as e:
                    outcome.unscored[scorer.name] = e.message
                except Exception as e:  # noqa: BLE001 - recorded against the feature
                    outcome.error = f"{scorer.name}: {_why(e)}"
                    break
            out[ev.index] = outcome
        return [out[ev.index] for ev in evidence]
    finally:
        if client is not None:
            client.close()


def _why(e: Exception) -> str:
    """Our errors say what happened in words; anything else gets its type name."""
    text = str(e) if isinstance(e, SaefeatError) else f"{type(e).__name__}: {e}"
    return text[:500]


_explain_task = ray.remote(max_retries=1)(explain_batch)


def _llm_settings(settings: Settings) -> dict[str, Any] | None:
    if LLMClient.from_settings(settings) is None:  # also checks the model is named
        return None
    return {
        "base_url": settings.llm_base_url,
        "model": settings.llm_model,
        "api_key": settings.llm_api_key,
        "timeout_s": settings.llm_timeout_s,
    }


def check_explain(spec: ExplainSpec, session, settings: Settings) -> None:
    """Everything that can be refused before a job exists: the SAE (404 / not indexed),
    the features, the explainer and scorers against the configured endpoint."""
    from saefeat.interp.catalog_io import check_sae

    check_explain_setup(spec, settings)
    check_sae(session, spec)


def check_explain_setup(
    spec: ExplainSpec, settings: Settings
) -> tuple[dict[str, Any] | None, Explainer]:
    """The explainer and scorers against the configured endpoint (no catalog needed: a
    pipeline checks this before its SAE exists); returns (the LLM settings, the explainer)."""
    llm = _llm_settings(settings)
    check_judges(spec.scorers, has_llm=llm is not None)
    return llm, make_explainer(spec.explainer, _client(llm))


def validate_explain(spec: ExplainSpec, settings: Settings | None = None) -> None:
    """check_explain on its own catalog session (the CLI, before its progress bar)."""
    from saefeat.storage.catalog.db import catalog_session

    settings = settings or get_settings()
    with catalog_session(settings) as s:
        check_explain(spec, s, settings)


def run_explain(
    spec: ExplainSpec,
    *,
    settings: Settings | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> ExplainResult:
    """Explain and score the spec's features; see the module docstring."""
    from saefeat.interp.catalog_io import prepare, write_outcomes
    from saefeat.storage.catalog.db import catalog_sessions

    settings = settings or get_settings()
    llm, explainer = check_explain_setup(spec, settings)
    t0 = time.perf_counter()
    plan = prepare(spec, settings, explainer)
    result = ExplainResult(
        spec.sae,
        explainer.name,
        explainer.prompt_version,
        skipped_existing=plan.skipped_existing,
        skipped_dead=plan.skipped_dead,
    )
    total = len(plan.todo)
    if progress:
        progress(0, total)
    if not plan.todo:
        result.seconds = time.perf_counter() - t0
        return result
    t_pool = time.perf_counter()
    pool = plan.build_pool(settings)
    result.pool_seconds = time.perf_counter() - t_pool
    ensure_ray(settings)
    pool_ref = ray.put(pool)
    job = _Job(spec.explainer, spec.scorers, llm, spec.seed)
    batches = [plan.todo[i : i + spec.batch_features] for i in range(0, total, spec.batch_features)]
    # At most two batches per CPU in flight: later ones start as earlier ones finish, so
    # a cancel drops little work and the evidence is read from the catalog as needed.
    width = max(1, 2 * int(ray.available_resources().get("CPU", 1)))
    pending: dict[Any, list[int]] = {}
    done = 0
    values: dict[str, list[float]] = {}

    def submit(batch: list[int]) -> None:
        with sessions() as s:
            evidence = plan.load_evidence(s, batch)
        pending[_explain_task.remote(job, evidence, pool_ref)] = batch

    def collect(ref: Any) -> None:
        nonlocal done
        batch = pending.pop(ref)
        outcomes = ray.get(ref)
        with sessions() as s:
            result.explained += write_outcomes(s, plan, explainer, outcomes)
        for o in outcomes:
            if o.error:
                result.failed[o.index] = o.error
            for score in o.scores:
                values.setdefault(score.type, []).append(score.value)
        done += len(batch)
        if progress:
            progress(done, total)

    queue = list(batches)
    # One engine for the whole job: each opening of the catalog migrates it and makes one.
    with catalog_sessions(settings) as sessions:
        try:
            while queue or pending:
                while queue and len(pending) < width and not (should_stop and should_stop()):
                    submit(queue.pop(0))
                if should_stop and should_stop():
                    result.cancelled = True
                    break
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                collect(ready[0])
        finally:
            for ref in pending:
                ray.cancel(ref)
    result.mean_scores = {k: float(np.mean(v)) for k, v in values.items()}
    result.seconds = time.perf_counter() - t0
    return result
