"""Every spec a job takes, in one package: the same spec runs from the CLI, the API or a
test. Each field has its description here, which the CLI's help and the OpenAPI schema
both show; each spec type sorts its fields into those that name the work and those that
only say how to run it (base.py: the content-id rule)."""

from saefeat.specs.base import Spec, content_id
from saefeat.specs.contrast import ContrastSpec
from saefeat.specs.explain import ExplainOptions, ExplainSpec
from saefeat.specs.harvest import CorpusSource, HarvestSpec
from saefeat.specs.index import IndexSpec
from saefeat.specs.pipeline import PipelineSpec
from saefeat.specs.train import Device, TrainJobSpec, TrainSpec

__all__ = ["ContrastSpec", "CorpusSource", "Device", "ExplainOptions", "ExplainSpec",
           "HarvestSpec", "IndexSpec", "PipelineSpec", "Spec", "TrainJobSpec", "TrainSpec",
           "content_id"]  # fmt: skip
