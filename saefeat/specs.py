"""Typed specs for each pipeline step: the same spec runs from the CLI, the API or a test."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from saefeat.corpus import BUILTIN_PYTHON_DOCS
from saefeat.errors import SpecError
from saefeat.lm import EMBEDDED_MODEL, parse_hook
from saefeat.paths import check_id
from saefeat.sae.base import ArchConfig, arch_settings, config_class
from saefeat.sae.topk import TopKConfig


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusSource(_Spec):
    path: str = BUILTIN_PYTHON_DOCS
    field: str = "text"  # the JSONL / Parquet / dataset column holding the text
    # Share of the mixed stream's text (by characters) relative to the other sources.
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)


# The fields that determine a harvest's data (its set id); the rest are execution knobs.
HARVEST_DATA_FIELDS = (
    "model", "revision", "model_dtype", "hooks", "corpus", "ctx_len", "bos",
    "token_budget", "contexts_per_shard", "storage_dtype", "on_bad_document", "on_nonfinite",
)  # fmt: skip


class HarvestSpec(_Spec):
    model: str = EMBEDDED_MODEL
    revision: str | None = None
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    hooks: list[str] = Field(min_length=1)
    corpus: list[CorpusSource] = Field(default_factory=lambda: [CorpusSource()], min_length=1)
    ctx_len: int = Field(128, ge=2, le=1 << 16)
    bos: Literal["context", "document", "none"] = "context"
    token_budget: int = Field(100_000, gt=0)
    contexts_per_shard: int = Field(64, ge=1, le=1 << 16)  # one shard is held in memory
    # zarr has no bfloat16: it is stored as its raw uint16 bits (see storage/activations.py).
    storage_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Binary or non-UTF-8 documents: "fail" stops with the file named; "skip" counts them.
    on_bad_document: Literal["skip", "fail"] = "fail"
    # NaN/Inf activations: "fail" stops the job; "drop" zeroes that context in its shard
    # and lists it in the shard's commit record, so readers and statistics leave it out.
    on_nonfinite: Literal["fail", "drop"] = "fail"
    # Execution knobs: they do not change the data, so they stay out of the set id.
    batch_size: int = Field(8, ge=1)
    workers: int | None = Field(None, ge=1)
    device: str | None = None
    # A shard whose worker process dies this many times is skipped and recorded.
    max_shard_attempts: int = Field(3, ge=1, le=100)

    @field_validator("hooks")
    @classmethod
    def _hooks_are_names(cls, hooks: list[str]) -> list[str]:
        for h in hooks:
            parse_hook(h)  # SpecError names the allowed form
        if len(set(hooks)) != len(hooks):
            raise ValueError("hooks are repeated")
        return hooks

    @field_validator("corpus", mode="before")
    @classmethod
    def _corpus_from_strings(cls, v):
        if isinstance(v, str):
            v = [v]
        return [{"path": s} if isinstance(s, str) else s for s in v]

    def set_id(self) -> str:
        """Hash of everything that determines the stored data: a repeated spec reuses it."""
        data = self.model_dump(include=set(HARVEST_DATA_FIELDS), mode="json")
        blob = json.dumps(data, sort_keys=True).encode()
        return "as-" + hashlib.sha256(blob).hexdigest()[:16]


# Execution knobs: they do not change what is trained, so they stay out of the SAE id.
TRAIN_EXECUTION_FIELDS = (
    "device", "name", "checkpoint_every_tokens", "eval_ce_contexts", "resume_from",
)  # fmt: skip


# Flat names older specs used for architecture settings -> the config field they fill.
LEGACY_ARCH_FIELDS = {
    "jumprelu_target_l0": "target_l0",
    "jumprelu_sparsity_coefficient": "sparsity_coefficient",
    "jumprelu_bandwidth": "bandwidth",
    "jumprelu_init_threshold": "init_threshold",
}


def _architecture_from_flat(data: dict) -> dict:
    """Fold settings given beside `architecture` (`k=4`, `l1_coefficient=...`, the older
    `jumprelu_*` names) into its config; a setting of another architecture is dropped, as
    the flat spec ignored it. A config given whole (a dict or object) is left alone."""
    arch = data.get("architecture", "topk")
    if not isinstance(arch, str):
        return data
    data = dict(data)
    names = arch_settings() | set(LEGACY_ARCH_FIELDS) | {"jumprelu_sparsity"}
    flat = {key: data.pop(key) for key in list(data) if key in names}
    if arch == "jumprelu" and "k" in flat:  # older specs: the target L0 defaulted to k
        flat.setdefault("jumprelu_target_l0", flat["k"])
    if flat.pop("jumprelu_sparsity", None) == "l0_penalty":  # older specs: no target
        flat["jumprelu_target_l0"] = None
    fields = config_class(arch).model_fields
    settings = {LEGACY_ARCH_FIELDS.get(k, k): v for k, v in flat.items()}
    data["architecture"] = {"name": arch} | {k: v for k, v in settings.items() if k in fields}
    return data


class TrainSpec(_Spec):
    """One SAE to train. `architecture` is the architecture's own config (saefeat/sae/*.py),
    picked by its `name`; its settings may also be given flat beside it (`k=4`)."""

    activation_set: str  # set id
    hook: str | None = Field(None, description="hook to train on (default: the set's first)")
    architecture: SerializeAsAny[ArchConfig] = Field(default_factory=TopKConfig)
    d_sae: int | None = Field(None, gt=0, description="latents (default: expansion_factor x d_in)")
    expansion_factor: int = Field(8, gt=0, description="d_sae / d_in when d_sae is not given")
    # AuxK (TopK family): coefficient (0 turns it off) and tokens without firing = dead.
    auxk_coefficient: float = Field(1 / 32, ge=0)
    dead_after_tokens: int | None = Field(None, gt=0)  # default: min(10M, half an epoch)
    init_decoder_norm: float = Field(1.0, gt=0)
    geometric_median_init: bool = True
    batch_size: int = Field(1024, gt=0, description="tokens per step")
    lr: float | None = Field(
        None, gt=0, description="default: sparsify's 2e-4 / sqrt(d_sae / 2^14)"
    )
    lr_warmup_frac: float = Field(0.05, ge=0, lt=1)
    lr_decay_frac: float = Field(0.2, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    # Adam's two moments: fp32, or bf16 (half the state memory; stochastically rounded).
    optimizer_state: Literal["fp32", "bf16"] = Field(
        "fp32", description="dtype of Adam's moments (bf16: half the memory)"
    )
    epochs: float = Field(1.0, gt=0, description="passes over the training contexts")
    # Bounded by what torch.manual_seed takes: a larger one would fail inside the job.
    seed: int = Field(0, ge=0, le=2**63 - 1,
                      description="seeds the initialisation and the batch order")  # fmt: skip
    device: str | None = None
    name: str | None = None
    checkpoint_every_tokens: int | None = Field(None, gt=0)
    resume_from: str | None = None  # a training-state folder; default: this run's own
    eval_ce_contexts: int = Field(8, ge=0)  # contexts for CE/KL with the SAE spliced in
    # Tokens left out of training, metrics and features (storage/exclusion.py): position
    # 0 and tokens whose norm exceeds this x the set's median norm.
    massive_norm_threshold: float = Field(
        10.0, gt=1, allow_inf_nan=False,
        description="leave out tokens whose norm exceeds this x the median",
    )  # fmt: skip
    # Held-out evaluation: this fraction of the set's contexts, never trained on...
    heldout_frac: float = Field(
        0.05, gt=0, lt=0.5, description="share of the set's contexts held out for evaluation"
    )
    # ...or, when named, a separate set (same model, hook and width); training then reads
    # every context of `activation_set`.
    eval_set: str | None = Field(None, description="evaluate on this set (same model, hook, width)")

    @field_validator("activation_set")
    @classmethod
    def _set_is_an_id(cls, v: str) -> str:
        return check_id(v, "activation_set")  # it becomes a folder name

    @model_validator(mode="before")
    @classmethod
    def _flat_settings(cls, data):
        return _architecture_from_flat(data) if isinstance(data, dict) else data

    @field_validator("architecture", mode="before")
    @classmethod
    def _config_by_name(cls, v):
        if isinstance(v, ArchConfig):
            return v
        if isinstance(v, str):
            v = {"name": v}
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError("must be an architecture name or a config with its `name`")
        return config_class(v["name"]).model_validate(v)

    @model_validator(mode="after")
    def _fits(self) -> TrainSpec:
        if self.d_sae is not None:
            try:
                self.architecture.check_width(self.d_sae)
            except SpecError as e:  # pydantic names the location; the message suffices
                raise ValueError(e.message) from None
        if self.lr_warmup_frac + self.lr_decay_frac > 1:
            raise ValueError("lr_warmup_frac + lr_decay_frac must be <= 1")
        return self


class IndexSpec(_Spec):
    sae: str  # SAE id in the catalog
    n_examples: int = Field(20, ge=1, le=1000)
    window: int = Field(8, ge=0, le=128)  # tokens either side of the focus token
    n_vocab: int = Field(20, ge=1, le=200)  # top and bottom tokens of the projection
    # Quantile samples: per_quantile_bin examples from each of n_quantile_bins equal-width
    # slices of (0, max activation]; 0 turns them off.
    n_quantile_bins: int = Field(10, ge=0, le=100)
    per_quantile_bin: int = Field(5, ge=0, le=100)
    n_neighbours: int = Field(10, ge=0, le=100)  # nearest features by decoder cosine
    batch_contexts: int = Field(32, ge=1, le=4096)
    device: str | None = None

    @field_validator("sae")
    @classmethod
    def _sae_is_an_id(cls, v: str) -> str:
        return check_id(v, "sae")  # it becomes a folder name
