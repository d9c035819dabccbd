"""Contrastive features: which of an SAE's features tell corpus A from corpus B.

`check_inputs` checks what a contrast reads (both sets at the SAE's model and hook,
non-empty, with documents to compare; a side given as text sources holds enough
documents: contrast_corpora.py, which also says how those are harvested; a crosscoder,
which reads several models or layers at once, is refused naming `sae`);
`compare_sides` turns the two sides' counts into per-feature statistics with a length
control and FDR (contrast_stats.py) and the held-out AUROC of a classifier on the top
features (contrast_classifier.py). Running the SAE over the sets is a worker's
(workers/contrast.py: `run_contrast`, which the CLI, the job and tests share).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from saefeat.analysis.contrast_classifier import ClassifierResult, classify
from saefeat.analysis.contrast_corpora import check_corpus_documents
from saefeat.analysis.contrast_docs import MIN_DOCUMENTS, counted_token_rows, document_starts
from saefeat.analysis.contrast_stats import FeatureStats, SideCounts, contrast_statistics
from saefeat.config import Settings
from saefeat.errors import NotFoundError, SpecError
from saefeat.features.crosscoder import refuse_crosscoder
from saefeat.sae import read_config
from saefeat.sae.base import SAEConfig
from saefeat.specs import ContrastSpec
from saefeat.storage.activations import STATUS_COMPLETE, ActivationSet, open_set


@dataclass
class ContrastInputs:
    sae_path: Path
    cfg: SAEConfig
    a: ActivationSet | None  # None: a side given as text sources, not harvested yet
    b: ActivationSet | None


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
    refuse_crosscoder(cfg.sources, "a contrast", "sae")
    _check_catalogued(session, settings, spec.sae)
    sets = []
    for side in ("a", "b"):
        set_id = getattr(spec, side)
        if set_id is None:  # text sources: enough documents, before any harvest
            check_corpus_documents(spec, side, settings)
            sets.append(None)
        else:
            sets.append(_check_set(settings, cfg, set_id, side))
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


def _trained_revision(settings: Settings, cfg: SAEConfig) -> str | None:
    """The model revision the SAE was trained at (its training set's; None: default)."""
    try:
        return open_set(settings.activations_dir, cfg.activation_set).revision
    except Exception:  # an imported SAE, or its set deleted: the default revision
        return None


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
    revision = _trained_revision(settings, cfg)
    if cfg.model and revision != aset.revision:
        raise SpecError(f"set {set_id} holds activations at revision {aset.revision!r}, "
                        f"the SAE's were at {revision!r}", field=field)  # fmt: skip
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
            f"least {MIN_DOCUMENTS} in each set (a plain-text file harvested whole is one "
            f"document: give the file as {field}_corpus instead, where blank lines split it "
            "into documents, or harvest a folder of files, or a JSONL or Parquet file with a "
            "document a row)",
            field=field,
        )
    return aset


def compare_sides(
    spec: ContrastSpec, side_a: SideCounts, side_b: SideCounts
) -> tuple[FeatureStats, ClassifierResult]:
    """Per-feature statistics of the two sides, and the held-out classifier on them."""
    stats = contrast_statistics(side_a, side_b)
    n, held_out = spec.classifier_features, spec.test_fraction
    return stats, classify(side_a, side_b, n_features=n, test_fraction=held_out, seed=spec.seed)
