"""The explain job: explain and score features of an indexed SAE, in Ray tasks of
`batch_features` features each, writing each feature's labels and scores to the catalog
as its batch returns.

Each of the spec's explainers (offline, patchscope, llm) explains each feature, and the
same scorers score every explainer's text; each text is an auto label with its scores,
and the feature's label shown is the best scored (storage/catalog/explanations.py).

An explanation is written whole or not at all: when its explainer or a scorer fails (an
unreachable endpoint, an unreadable answer) its error is recorded on the result and
nothing of it is stored; the job goes on. A rerun skips what is already explained by the
same explainer and prompt version, so a cancelled or failed job resumes.

Inside `runtime.work_here()` (the CLI's local runs) the batches run in this process, in
turn, at most HERE_BATCH features each (the models they load stay loaded between
batches, so smaller batches cost little and report progress more often), and no Ray is
started.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from saefeat.config import Settings, get_settings
from saefeat.errors import SaefeatError
from saefeat.interp.catalog_io import FeatureOutcome
from saefeat.interp.evidence import FeatureEvidence
from saefeat.interp.explainers import Explainer, explain_all, make_explainer, query_text
from saefeat.interp.llm import LLMClient
from saefeat.interp.pool import ScoringPool
from saefeat.interp.scorers import NotScorable, check_judges
from saefeat.specs import ExplainSpec
from saefeat.workers.job_progress import Progress, ShouldStop
from saefeat.workers.runtime import ensure_ray, runs_here

HERE_BATCH = 16  # features per batch when the batches run in this process

if TYPE_CHECKING:
    from saefeat.interp.patchscope import Subject


@dataclass
class ExplainResult:
    sae: str
    explainer: str  # the explainers, joined by commas
    prompt_version: str  # theirs, joined by commas
    explained: int = 0
    skipped_existing: int = 0  # explained before by the same explainer + prompt
    skipped_dead: int = 0  # no examples: never fired on the activation set
    failed: dict[int, str] = field(default_factory=dict)  # feature index -> error
    explanations: int = 0  # texts written (one per feature and explainer)
    cancelled: bool = False
    seconds: float = 0.0
    pool_seconds: float = 0.0  # of `seconds`: building the scoring pool (once per job)
    mean_scores: dict[str, float] = field(default_factory=dict)
    # explainer -> score type -> mean over the features it explained
    mean_scores_by_explainer: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> str:
        means = ", ".join(f"{k} {v:.3f}" for k, v in self.mean_scores.items())
        line = (
            f"explained {self.explained} feature(s) of {self.sae} with {self.explainer} "
            f"({self.prompt_version}) in {self.seconds:.1f}s; {self.skipped_existing} already "
            f"explained, {self.skipped_dead} never fire, {len(self.failed)} failed"
        )
        line += f"; mean scores: {means}" if means else ""
        if len(self.mean_scores_by_explainer) > 1:
            line += "; by explainer: " + ", ".join(
                f"{name} " + "/".join(f"{v:.3f}" for v in by.values())
                for name, by in self.mean_scores_by_explainer.items()
            )
        return line


@dataclass
class _Job:
    """What a Ray task needs besides its features (small; the pool travels by ref)."""

    explainer: str  # one name or several joined by commas (ExplainSpec.explainer)
    scorers: list[str]
    llm: dict[str, Any] | None
    seed: int
    subject: Subject | None = None  # what the patchscope explainer runs


def _client(llm: dict[str, Any] | None) -> LLMClient | None:
    return LLMClient(**llm) if llm else None


def explain_batch(
    job: _Job,
    evidence: list[FeatureEvidence],
    pool: ScoringPool,
    missing: dict[int, list[str]] | None = None,
) -> list[FeatureOutcome]:
    """Explain and score some features (one Ray task): one outcome per feature and
    explainer (those `missing` names for it; default all of the job's), features in
    order. Never raises for one feature."""
    from saefeat.interp.encoder import sentence_encoder
    from saefeat.interp.scorers import EmbeddingCache, make_scorers
    from saefeat.storage.catalog.explanations import ENCODER_SCORERS

    client = _client(job.llm)
    try:
        names = job.explainer.split(",")
        explainers = {n: make_explainer(n, client, job.subject) for n in names}
        needs_encoder = any(n in ENCODER_SCORERS for n in job.scorers)
        embed = EmbeddingCache(sentence_encoder()) if needs_encoder else None
        scorers = make_scorers(job.scorers, embed=embed, client=client, seed=job.seed)
        todo = {ev.index: (missing or {}).get(ev.index, names) for ev in evidence}
        texts: dict[tuple[int, str], str | Exception] = {}
        for name, explainer in explainers.items():
            mine = [ev for ev in evidence if name in todo[ev.index]]
            for ev, text in zip(mine, explain_all(explainer, mine), strict=True):
                texts[(ev.index, name)] = text
        if embed is not None:  # encode the batch's texts together: much faster than singly
            held = [w.text for ev in evidence for w in ev.held_out[:10]]
            queries = [query_text(t) for t in texts.values() if isinstance(t, str)]
            embed.prime(queries + held)  # what the scorers read
        out = []
        for ev in evidence:
            for name in todo[ev.index]:
                explainer = explainers[name]
                outcome = FeatureOutcome(ev.index, explainer=name, explainer_model=explainer.model,
                                         prompt_version=explainer.prompt_version)  # fmt: skip
                text = texts[(ev.index, name)]
                if isinstance(text, Exception):
                    outcome.error = f"explainer: {_why(text)}"
                    out.append(outcome)
                    continue
                outcome.text = text
                outcome.explained_from = [w.brief() for w in ev.explain]
                if name == "offline":
                    outcome.promoted_source = ev.promoted_source
                _score(outcome, scorers, ev, pool)
                out.append(outcome)
        return out
    finally:
        if client is not None:
            client.close()


def _score(outcome: FeatureOutcome, scorers: list, ev: FeatureEvidence, pool: ScoringPool) -> None:
    for scorer in scorers:
        try:
            outcome.scores.append(scorer.score(outcome.text, ev, pool))
        except NotScorable as e:
            outcome.unscored[scorer.name] = e.message
        except Exception as e:  # noqa: BLE001 - recorded against the feature
            outcome.error = f"{scorer.name}: {_why(e)}"
            return


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
) -> tuple[dict[str, Any] | None, list[Explainer]]:
    """The explainers and scorers against the configured endpoint (no catalog needed: a
    pipeline checks this before its SAE exists); returns (the LLM settings, the
    explainers, in the order the job runs them)."""
    llm = _llm_settings(settings)
    check_judges(spec.scorers, has_llm=llm is not None)
    client = _client(llm)
    return llm, [make_explainer(name, client) for name in spec.explainers]


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
    llm, explainers = check_explain_setup(spec, settings)
    t0 = time.perf_counter()
    plan = prepare(spec, settings, explainers)
    result = ExplainResult(
        spec.sae,
        ",".join(e.name for e in explainers),
        ",".join(e.prompt_version for e in explainers),
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
    here = runs_here(settings)
    if here:
        pool_ref, width, size = pool, 1, min(spec.batch_features, HERE_BATCH)
    else:
        ensure_ray(settings)
        pool_ref, size = ray.put(pool), spec.batch_features
        # At most two batches per CPU in flight: later ones start as earlier ones finish,
        # so a cancel drops little work and the evidence is read from the catalog as needed.
        width = max(1, 2 * int(ray.available_resources().get("CPU", 1)))
    job = _Job(spec.explainer, spec.scorers, llm, spec.seed, plan.subject())
    batches = [plan.todo[i : i + size] for i in range(0, total, size)]
    pending: dict[Any, list[int]] = {}
    done = 0
    values: dict[str, list[float]] = {}
    by_explainer: dict[str, dict[str, list[float]]] = {}

    def submit(batch: list[int]) -> None:
        with sessions() as s:
            evidence = plan.load_evidence(s, batch)
        missing = {i: plan.missing[i] for i in batch}
        if here:
            record(batch, explain_batch(job, evidence, pool, missing))
        else:
            pending[_explain_task.remote(job, evidence, pool_ref, missing)] = batch

    def collect(ref: Any) -> None:
        record(pending.pop(ref), ray.get(ref))

    def record(batch: list[int], outcomes: list[FeatureOutcome]) -> None:
        nonlocal done
        with sessions() as s:
            result.explanations += write_outcomes(s, plan, outcomes)
        result.explained += len({o.index for o in outcomes if not o.error and o.text})
        for o in outcomes:
            if o.error:
                prefix = f"{o.explainer} " if len(explainers) > 1 else ""
                result.failed.setdefault(o.index, prefix + o.error)
            for score in o.scores:
                values.setdefault(score.type, []).append(score.value)
                by_explainer.setdefault(o.explainer, {}).setdefault(score.type, []).append(
                    score.value
                )
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
    result.mean_scores_by_explainer = {
        name: {k: float(np.mean(v)) for k, v in by.items()} for name, by in by_explainer.items()
    }
    result.seconds = time.perf_counter() - t0
    return result
