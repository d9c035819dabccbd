"""Contrastive features: which of an SAE's features tell corpus A from corpus B.

`run_contrast(spec)` checks the inputs (both sets at the SAE's model and hook, non-empty),
runs the SAE over both sets (contrast_pass.py), computes per-feature statistics with a
length control and FDR (contrast_stats.py) and the held-out AUROC of a classifier on the
top features (contrast_classifier.py). Storing the result is the caller's
(storage/catalog/contrasts.py), so the CLI, the job and tests share this one function.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from saefeat.analysis.contrast_classifier import ClassifierResult, classify
from saefeat.analysis.contrast_docs import counted_token_rows, document_starts
from saefeat.analysis.contrast_pass import count_sides
from saefeat.analysis.contrast_stats import FeatureStats, contrast_statistics
from saefeat.config import Settings, get_settings
from saefeat.errors import NotFoundError, SpecError
from saefeat.paths import check_id
from saefeat.sae import read_config
from saefeat.sae.base import SAEConfig
from saefeat.storage.activations import STATUS_COMPLETE, ActivationSet, open_set

# Fields that determine the result (the contrast id); the rest are execution knobs.
# alpha is one: it decides the stored significant counts and top lists.
CONTRAST_DATA_FIELDS = (
    "sae", "a", "b", "window", "alpha", "classifier_features", "test_fraction", "seed",
)  # fmt: skip


MIN_DOCUMENTS = 2  # a side's documents, the unit every statistic counts


class ContrastSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sae: str = Field(description="SAE id")
    a: str = Field(description="Activation set id of corpus A")
    b: str = Field(description="Activation set id of corpus B")
    # Length control: document firing is measured on each document's first `window`
    # counted tokens (32, the example window length delphi uses).
    window: int = Field(32, ge=1, le=4096)
    alpha: float = Field(0.05, gt=0, lt=1, description="FDR level (q-value) of 'significant'")
    top: int = Field(20, ge=1, le=1000, description="Features listed per side")
    classifier_features: int = Field(32, ge=1, le=4096)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # the held-out split's random_state (sklearn's range)
    batch_contexts: int = Field(32, ge=1, le=4096)

    @field_validator("sae", "a", "b")
    @classmethod
    def _safe_ids(cls, v: str, info) -> str:
        return check_id(v, info.field_name)  # each becomes a folder name

    device: str | None = None

    @field_validator("b")
    @classmethod
    def _two_sets(cls, v: str, info) -> str:
        if v == info.data.get("a"):
            raise ValueError("is the same set as a; a contrast needs two sets")
        return v

    def contrast_id(self) -> str:
        data = self.model_dump(include=set(CONTRAST_DATA_FIELDS), mode="json")
        return "ct-" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ContrastInputs:
    sae_path: Path
    cfg: SAEConfig
    a: ActivationSet
    b: ActivationSet


@dataclass
class ContrastResult:
    contrast_id: str
    spec: ContrastSpec
    stats: FeatureStats
    classifier: ClassifierResult
    seconds: float  # the whole contrast
    pass_seconds: float  # of which: the SAE over both sets


def check_inputs(spec: ContrastSpec, settings: Settings, session: Session) -> ContrastInputs:
    """Everything a contrast needs, or a SpecError naming the field at fault."""
    sae_path = settings.saes_dir / spec.sae
    try:
        cfg = read_config(sae_path)
    except NotFoundError:
        raise SpecError(
            f"no trained SAE {spec.sae!r} under {settings.saes_dir}", field="sae"
        ) from None
    _check_catalogued(session, settings, spec.sae)
    sets = [_check_set(settings, cfg, getattr(spec, f), f) for f in ("a", "b")]
    return ContrastInputs(sae_path, cfg, *sets)


def _check_catalogued(session: Session, settings: Settings, sae_id: str) -> None:
    """The results' rows point at the SAE's catalog row: an SAE with weights but no row
    (an imported SAELens or sparsify file) failed only when they were written."""
    from saefeat.storage.catalog.queries import require_sae

    try:
        require_sae(session, sae_id)
    except NotFoundError:
        raise SpecError(
            f"SAE {sae_id!r} has weights under {settings.saes_dir} but is not in the "
            "catalog, where a contrast's results are stored",
            field="sae",
        ) from None


def _check_set(settings: Settings, cfg: SAEConfig, set_id: str, field: str) -> ActivationSet:
    try:
        aset = open_set(settings.activations_dir, set_id)
    except NotFoundError:
        raise SpecError(f"no activation set {set_id!r}; harvest it first", field=field) from None
    if aset.status != STATUS_COMPLETE:
        raise SpecError(
            f"activation set {set_id} is not complete (status {aset.status})", field=field
        )
    if cfg.model and aset.model_name != cfg.model:
        raise SpecError(
            f"set {set_id} holds activations of model {aset.model_name!r}, but the SAE was "
            f"trained on {cfg.model!r}",
            field=field,
        )
    if cfg.hook not in aset.hooks:
        raise SpecError(
            f"set {set_id} has hooks {aset.hooks}, not the SAE's hook {cfg.hook!r}", field=field
        )
    if aset.d_model != cfg.d_in:
        raise SpecError(
            f"set {set_id} has width {aset.d_model}, the SAE takes d_in={cfg.d_in}", field=field
        )
    shards = aset.committed_shards()
    if not shards or not any(len(counted_token_rows(aset, s)) for s in shards):
        raise SpecError(f"set {set_id} holds no tokens to count", field=field)
    # The statistics and the classifier compare documents; one document a side leaves
    # nothing to compare (a job that "succeeds" with empty lists).
    if len(document_starts(aset)) < MIN_DOCUMENTS:
        raise SpecError(
            f"set {set_id} holds one document; a contrast compares documents and needs at "
            f"least {MIN_DOCUMENTS} in each set (a plain-text file is one document: harvest "
            "a folder of files, or a JSONL or Parquet file with a document a row)",
            field=field,
        )
    return aset


def run_contrast(
    spec: ContrastSpec,
    *,
    settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ContrastResult:
    settings = settings or get_settings()
    t0 = time.perf_counter()
    from saefeat.storage.catalog.db import catalog_session

    with catalog_session(settings) as s:
        inputs = check_inputs(spec, settings, s)
    side_a, side_b = count_sides(
        inputs.sae_path,
        [inputs.a, inputs.b],
        window=spec.window,
        batch_contexts=spec.batch_contexts,
        device=spec.device,
        settings=settings,
        progress=progress,
        should_stop=should_stop,
    )
    t_pass = time.perf_counter() - t0
    stats = contrast_statistics(side_a, side_b)
    clf = classify(
        side_a,
        side_b,
        n_features=spec.classifier_features,
        test_fraction=spec.test_fraction,
        seed=spec.seed,
    )
    return ContrastResult(spec.contrast_id(), spec, stats, clf, time.perf_counter() - t0, t_pass)
