"""The `pipeline` job kind: a chain of stages (harvest -> train -> index), each run as a
job of its own kind (a child row with its own progress, lease and attempts).

The chain is planned from the pipeline's spec alone: each stage builds its child spec
from the pipeline spec and what the earlier stages will make (the harvest's set id, the
training's SAE id), and those ids are hashes of the specs, so the plan is known before
anything runs. That gives admission its checks (a stage whose inputs disagree is refused
before a row is written), the jobs page its chain (the latest job of each stage's spec
hash), and a re-run its reuse: a stage whose result exists is skipped. A pipeline picked
up after a crash re-plans, skips what is done and joins or resumes the stage job that
was running. Stages: harvest, train, index, explain (opt in: name it in `stages`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saefeat.config import Settings
from saefeat.errors import SpecError
from saefeat.specs import HarvestSpec, IndexSpec, TrainSpec
from saefeat.workers.job_kinds import (
    JobKind,
    JobOutcome,
    JobStopped,
    Progress,
    job_kind,
    register_job_kind,
)
from saefeat.workers.train_job import Device, TrainJobSpec, already_trained

WAIT_S = 1.0  # how often a pipeline looks at a stage job another runner holds


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[str] = Field(default_factory=lambda: ["harvest", "train", "index"],
                              min_length=1, max_length=8)  # fmt: skip
    harvest: HarvestSpec | None = Field(None, description="The harvest stage's spec")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainSpec fields; activation_set defaults to the harvest stage's set",
    )
    index: dict[str, Any] = Field(
        default_factory=dict, description="IndexSpec fields; sae defaults to the trained SAE"
    )
    explain: dict[str, Any] = Field(
        default_factory=dict,
        description="ExplainSpec fields for an `explain` stage; sae defaults to the trained SAE",
    )
    device: Device = Field("auto", description="Where training runs (see POST /v1/trainings)")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources the training task needs"
    )

    def work_hash(self) -> str:
        hashes = [f"{stage.kind}:{job_kind(stage.kind).spec_hash(child)}"
                  for stage, child in plan(self)]  # fmt: skip
        return "pipe-" + hashlib.sha256("|".join(hashes).encode()).hexdigest()[:16]


Made = dict[str, Any]  # what the stages so far make: activation_set, hooks, sae


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # the job kind that runs it
    build: Callable[[PipelineSpec, Made], BaseModel]  # the child spec
    made: Callable[[BaseModel], Made]  # what the child makes, for the later stages
    done: Callable[[Settings, BaseModel], bool]  # its result exists: skip it


def _harvest(p: PipelineSpec, made: Made) -> HarvestSpec:
    if p.harvest is None:
        raise SpecError("the harvest stage needs a harvest spec", field="harvest")
    return p.harvest


def _harvest_done(settings: Settings, spec: HarvestSpec) -> bool:
    from saefeat.storage.activations import STATUS_COMPLETE, open_set

    try:
        return open_set(settings.activations_dir, spec.set_id()).status == STATUS_COMPLETE
    except Exception:  # not there (or unreadable): harvest it
        return False


def _train(p: PipelineSpec, made: Made) -> TrainJobSpec:
    data = {"activation_set": made.get("activation_set"), **p.train}
    if data["activation_set"] is None:
        raise SpecError("name the activation set, or put a harvest stage before training",
                        field="train.activation_set")  # fmt: skip
    spec = TrainSpec(**data)
    hooks = made.get("hooks")
    if hooks is not None and spec.hook is not None and spec.hook not in hooks:
        raise SpecError(f"hook {spec.hook!r} is not harvested by this pipeline "
                        f"(its harvest stage has {hooks})", field="train.hook")  # fmt: skip
    return TrainJobSpec(specs=[spec], device=p.device, resources=p.resources)


def _index(p: PipelineSpec, made: Made) -> IndexSpec:
    data = {"sae": made.get("sae"), **p.index}
    if data["sae"] is None:
        raise SpecError("name the SAE, or put a train stage before indexing", field="index.sae")
    return IndexSpec(**data)


def _index_done(settings: Settings, spec: IndexSpec) -> bool:
    from saefeat.workers.index_job import already_indexed

    return already_indexed(settings, spec.sae)


def _explain(p: PipelineSpec, made: Made) -> BaseModel:
    from saefeat.interp.spec import ExplainSpec

    data = {"sae": made.get("sae"), **p.explain}
    if data["sae"] is None:
        raise SpecError("name the SAE, or put a train stage before explaining",
                        field="explain.sae")  # fmt: skip
    return ExplainSpec(**data)


STAGES = {
    s.name: s
    for s in (
        Stage("harvest", "harvest", _harvest,
              lambda h: {"activation_set": h.set_id(), "hooks": h.hooks}, _harvest_done),
        Stage("train", "train", _train, lambda t: {"sae": t.sae_ids()[0]},
              lambda settings, t: already_trained(settings, t.sae_ids())),
        Stage("index", "index", _index, lambda i: {}, _index_done),
        # Never skipped whole: an explain job itself skips the features already explained.
        Stage("explain", "explain", _explain, lambda e: {}, lambda settings, e: False),
    )
}  # fmt: skip


def plan(spec: PipelineSpec) -> list[tuple[Stage, BaseModel]]:
    """Each stage with its child spec; SpecError names the field of the first stage
    that is unknown, repeated, or disagrees with the stages before it."""
    steps, made = [], {}
    for i, name in enumerate(spec.stages):
        stage = STAGES.get(name)
        if stage is None:
            raise SpecError(f"{name!r} is not a stage; known: {sorted(STAGES)}",
                            field=f"stages.{i}")  # fmt: skip
        if name in spec.stages[:i]:
            raise SpecError(f"stage {name!r} is repeated", field=f"stages.{i}")
        try:
            child = stage.build(spec, made)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SpecError(first["msg"].removeprefix("Value error, "),
                            field=f"{name}.{where}" if where else name) from None  # fmt: skip
        steps.append((stage, child))
        made |= stage.made(child)
    return steps


def run_pipeline_job(
    spec: PipelineSpec,
    *,
    settings: Settings,
    progress: Progress | None,
    should_stop: Callable[[], bool],
) -> JobOutcome:
    from saefeat.storage.catalog.db import catalog_sessions
    from saefeat.workers.jobs import JobRunner

    steps = plan(spec)
    ran = []
    with catalog_sessions(settings) as sessions:
        runner = JobRunner(settings, sessions)
        try:
            for i, (stage, child) in enumerate(steps):
                if progress is not None:
                    progress(i, len(steps))
                if stage.done(settings, child):
                    continue
                job, _ = runner.submit(child)  # joins the stage's job if one is active
                job = _run_until_finished(runner, job.id, should_stop)
                if job.status != "succeeded":
                    return JobOutcome("failed", f"stage {stage.name} (job {job.id}) "
                                      f"{job.status}: {job.error}")  # fmt: skip
                ran.append(stage.name)
        finally:
            runner.shutdown()
    if progress is not None:
        progress(len(steps), len(steps))
    skipped = [s.name for s, _ in steps if s.name not in ran]
    return JobOutcome("succeeded", f"reused: {', '.join(skipped)}" if skipped else None, ran)


def _run_until_finished(runner, job_id: str, should_stop: Callable[[], bool]):
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


PIPELINE = register_job_kind(
    JobKind(
        name="pipeline",
        spec_type=PipelineSpec,
        spec_hash=PipelineSpec.work_hash,
        run=run_pipeline_job,
    )  # fmt: skip
)
