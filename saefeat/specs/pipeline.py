"""PipelineSpec: a chain of stages, each a job of its own kind; and how each stage's spec
is built from the pipeline's and from what the earlier stages make.

The builders live here because they only build specs; which kinds are stages, in what
registry, and how a stage is skipped are the job kinds' (workers/job_kinds.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from saefeat.errors import SpecError
from saefeat.specs.base import Spec
from saefeat.specs.explain import ExplainSpec
from saefeat.specs.harvest import HarvestSpec
from saefeat.specs.index import IndexSpec
from saefeat.specs.train import Device, TrainJobSpec, TrainSpec

Made = dict[str, Any]  # what the stages so far make: activation_set, hooks, sae


class PipelineSpec(Spec):
    # Its id is its stages' ids (workers/pipeline_job.py pipeline_hash), so these only
    # sort the fields; device and resources reach the train stage's RUN_FIELDS.
    ID_FIELDS = ("stages", "harvest", "train", "index", "explain")
    RUN_FIELDS = ("device", "resources")

    # Explain is a default stage: every feature gets an offline explanation (with its
    # scores), so concept search covers the whole SAE; progress counts features.
    stages: list[str] = Field(default_factory=lambda: ["harvest", "train", "index", "explain"],
                              min_length=1, max_length=8,
                              description="the stages, in order (explain: every feature, "
                              "offline, unless `explain` says otherwise)")  # fmt: skip
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

    def content_id(self) -> str:
        raise TypeError("a pipeline's id is its stages' ids: workers.pipeline_job.pipeline_hash")


def build_harvest(p: PipelineSpec, made: Made) -> HarvestSpec:
    if p.harvest is None:
        raise SpecError("the harvest stage needs a harvest spec", field="harvest")
    return p.harvest


def harvest_makes(h: HarvestSpec) -> Made:
    return {"activation_set": h.set_id(), "hooks": h.hooks}


def build_train(p: PipelineSpec, made: Made) -> TrainJobSpec:
    data = {"activation_set": made.get("activation_set"), **p.train}
    if data["activation_set"] is None:
        raise SpecError("name the activation set, or put a harvest stage before training",
                        field="train.activation_set")  # fmt: skip
    spec = TrainSpec(**data)
    hooks = made.get("hooks")
    for name in ("hook", "hook_out"):
        hook = getattr(spec, name)
        if hooks is not None and hook is not None and hook not in hooks:
            raise SpecError(f"{name} {hook!r} is not harvested by this pipeline "
                            f"(its harvest stage has {hooks})", field=f"train.{name}")  # fmt: skip
    return TrainJobSpec(specs=[spec], device=p.device, resources=p.resources)


def train_makes(t: TrainJobSpec) -> Made:
    return {"sae": t.sae_ids()[0]}


def _on_trained_sae(name: str, spec_type: type[Spec]):
    """A builder for a stage that takes an SAE: the pipeline's own, or the trained one."""

    def build(p: PipelineSpec, made: Made) -> Spec:
        data = {"sae": made.get("sae"), **getattr(p, name)}
        if data["sae"] is None:
            raise SpecError(f"name the SAE, or put a train stage before the {name} stage",
                            field=f"{name}.sae")  # fmt: skip
        return spec_type(**data)

    return build


build_index = _on_trained_sae("index", IndexSpec)
build_explain = _on_trained_sae("explain", ExplainSpec)


def makes_nothing(spec: Spec) -> Made:
    return {}
