"""The `pipeline` job kind: a chain of stages (harvest -> train -> index -> explain), each
run as a job of its own kind (a child row with its own progress, lease and attempts).

The chain is planned from the pipeline's spec alone: each stage builds its child spec
from the pipeline spec and what the earlier stages will make (the harvest's set id, the
training's SAE id), and those ids are hashes of the specs, so the plan is known before
anything runs. That gives admission its checks (a stage whose inputs disagree is refused
before a row is written), the jobs page its chain (the latest job of each stage's spec
hash), and a re-run its reuse: a stage whose result exists is skipped. A pipeline picked
up after a crash re-plans, skips what is done and joins or resumes the stage job that
was running. The stages are the job kinds with a pipeline role (job_kinds.Stage):
harvest, train, index, explain (all four by default: every feature gets an offline
explanation, so concept search covers the whole SAE; leave explain out of `stages` to
skip it).
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ValidationError

from saefeat.admission import Admission
from saefeat.config import Settings
from saefeat.errors import SpecError
from saefeat.specs import PipelineSpec
from saefeat.specs.base import content_id
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.workers.job_kinds import (
    JobKind,
    JobOutcome,
    JobStopped,
    Route,
    register_job_kind,
    stage_kinds,
)
from saefeat.workers.job_progress import Progress, ShouldStop

WAIT_S = 1.0  # how often a pipeline looks at a stage job another runner holds


def plan(spec: PipelineSpec) -> list[tuple[JobKind, BaseModel]]:
    """Each stage's job kind with its spec; SpecError names the field of the first stage
    that is unknown, repeated, or disagrees with the stages before it."""
    kinds = stage_kinds()
    steps, made = [], {}
    for i, name in enumerate(spec.stages):
        kind = kinds.get(name)
        if kind is None:
            raise SpecError(f"{name!r} is not a stage; known: {sorted(kinds)}",
                            field=f"stages.{i}")  # fmt: skip
        if name in spec.stages[:i]:
            raise SpecError(f"stage {name!r} is repeated", field=f"stages.{i}")
        try:
            child = kind.stage.build(spec, made)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SpecError(first["msg"].removeprefix("Value error, "),
                            field=f"{name}.{where}" if where else name) from None  # fmt: skip
        steps.append((kind, child))
        made |= kind.stage.makes(child)
    return steps


def pipeline_hash(spec: PipelineSpec) -> str:
    """A pipeline names the work of its stages: their kinds and spec hashes, in order."""
    return content_id("pipe", "|".join(f"{k.name}:{k.spec_hash(c)}" for k, c in plan(spec)))


def admit_pipeline(spec: PipelineSpec, ctx: Admission) -> None:
    """A plan whose stages agree, and each stage admitted as its own job would be, but for
    the inputs an earlier stage makes (they do not exist yet)."""
    made: set[str] = set()
    for kind, child in plan(spec):  # SpecError names the stage and its field
        try:
            kind.admit(child, Admission(ctx.settings, ctx.session, frozenset(made)))
        except SpecError as e:
            raise SpecError(
                e.message, field=f"{kind.name}.{e.field}" if e.field else kind.name
            ) from None
        made |= kind.stage.makes(child).keys()


def run_pipeline_job(
    spec: PipelineSpec, *, settings: Settings, progress: Progress | None, should_stop: ShouldStop
) -> JobOutcome:
    from saefeat.storage.catalog.db import catalog_sessions
    from saefeat.workers.jobs import JobRunner

    steps = plan(spec)
    ran = []
    with catalog_sessions(settings) as sessions:
        runner = JobRunner(settings, sessions)
        try:
            for i, (kind, child) in enumerate(steps):
                if progress is not None:
                    progress(i, len(steps))
                if kind.stage.done(settings, child):
                    continue
                job, _ = runner.submit(child)  # joins the stage's job if one is active
                job = _run_until_finished(runner, job.id, should_stop)
                if job.status != JobStatus.SUCCEEDED:
                    return JobOutcome(JobStatus.FAILED, f"stage {kind.name} (job {job.id}) "
                                      f"{job.status}: {job.error}")  # fmt: skip
                ran.append(kind.name)
        finally:
            runner.shutdown()
    if progress is not None:
        progress(len(steps), len(steps))
    skipped = [k.name for k, _ in steps if k.name not in ran]
    return JobOutcome(
        JobStatus.SUCCEEDED, f"reused: {', '.join(skipped)}" if skipped else None, ran
    )


def _run_until_finished(runner, job_id: str, should_stop: ShouldStop):
    """Run the stage job here, or wait while another runner holds it (its lease runs
    out if that runner died, and the next try here claims it)."""
    from saefeat.workers.jobs import FINISHED

    while True:
        try:
            runner.run(job_id, also_stop=should_stop)  # at once if it is not claimable
        except Exception:  # recorded on the stage's row, read below
            pass
        if should_stop():
            raise JobStopped("stopped on request; finished stages stay")
        job = runner.get(job_id)
        if job.status in FINISHED:
            return job
        time.sleep(WAIT_S)


ROUTE = Route(
    "/pipelines",
    "Submit a pipeline: harvest -> train -> index -> explain, each stage a job of its own",
    "Needs the `jobs` scope. `stages` (default harvest, train, index, explain) run in order; "
    "`train` holds TrainSpec fields (the set is the harvest's), `index` IndexSpec "
    "fields (the SAE is the training's), `explain` ExplainSpec fields (default: every "
    "feature, offline; its progress counts features). A stage whose result exists is "
    "skipped. "
    "Stages that disagree (a hook the harvest does not take) or an unknown stage: "
    "422 naming the field, and no job is made. GET /v1/jobs/{id} shows the chain.",
)
PIPELINE = register_job_kind(
    JobKind("pipeline", PipelineSpec, run_pipeline_job, ROUTE, "stages", admit=admit_pipeline,
            spec_hash=pipeline_hash)
)  # fmt: skip
