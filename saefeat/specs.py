"""Typed specs for each pipeline step: the same spec runs from the CLI, the API or a test."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from saefeat.corpus import BUILTIN_PYTHON_DOCS
from saefeat.lm import EMBEDDED_MODEL, parse_hook
from saefeat.paths import check_id


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
    contexts_per_shard: int = Field(64, ge=1)
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


class TrainSpec(_Spec):
    """One SAE to train. `architecture` picks the class; the fields after it that name an
    architecture apply only to that one."""

    activation_set: str  # set id
    hook: str | None = None  # default: the set's first hook
    architecture: Literal["topk", "batchtopk", "jumprelu", "relu", "matryoshka_batchtopk"] = "topk"
    d_sae: int | None = Field(None, gt=0)  # default: expansion_factor x d_in
    expansion_factor: int = Field(8, gt=0)
    # TopK / BatchTopK / Matryoshka: active latents per token (BatchTopK: on average).
    k: int = Field(32, gt=0)
    # ReLU: L1 penalty on activations weighted by decoder row norms.
    l1_coefficient: float = Field(0.02, ge=0)
    # JumpReLU: sparsity from a target L0, coef * (L0/target - 1)^2 (target None: k), or
    # from coef * L0 ("l0_penalty"); STE bandwidth and initial threshold as in Gemma Scope.
    jumprelu_sparsity: Literal["target_l0", "l0_penalty"] = "target_l0"
    jumprelu_target_l0: float | None = Field(None, gt=0)
    jumprelu_sparsity_coefficient: float = Field(1.0, ge=0)
    jumprelu_bandwidth: float = Field(0.001, gt=0)
    jumprelu_init_threshold: float = Field(0.001, ge=0)
    # BatchTopK / Matryoshka: EMA rate of the inference threshold.
    threshold_ema: float = Field(0.01, gt=0, le=1)
    # Matryoshka: fractions of d_sae in each nested group (sum to 1).
    matryoshka_groups: list[float] = Field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5625])
    # AuxK (TopK family): coefficient (0 turns it off) and tokens without firing = dead.
    auxk_coefficient: float = Field(1 / 32, ge=0)
    dead_after_tokens: int | None = Field(None, gt=0)  # default: min(10M, half an epoch)
    init_decoder_norm: float = Field(1.0, gt=0)
    geometric_median_init: bool = True
    batch_size: int = Field(1024, gt=0)
    lr: float | None = Field(None, gt=0)  # default: sparsify's 2e-4 / sqrt(d_sae / 2^14)
    lr_warmup_frac: float = Field(0.05, ge=0, lt=1)
    lr_decay_frac: float = Field(0.2, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    epochs: float = Field(1.0, gt=0)
    seed: int = 0
    device: str | None = None
    name: str | None = None
    checkpoint_every_tokens: int | None = Field(None, gt=0)
    resume_from: str | None = None  # a training-state folder; default: this run's own
    eval_ce_contexts: int = Field(8, ge=0)  # contexts for CE/KL with the SAE spliced in
    # Tokens left out of training, metrics and features (storage/exclusion.py): position
    # 0 and tokens whose norm exceeds this x the set's median norm.
    massive_norm_threshold: float = Field(10.0, gt=1, allow_inf_nan=False)
    # Held-out evaluation: this fraction of the set's contexts, never trained on...
    heldout_frac: float = Field(0.05, gt=0, lt=0.5)
    # ...or, when named, a separate set (same model, hook and width); training then reads
    # every context of `activation_set`.
    eval_set: str | None = None

    @field_validator("activation_set")
    @classmethod
    def _set_is_an_id(cls, v: str) -> str:
        return check_id(v, "activation_set")  # it becomes a folder name

    @model_validator(mode="after")
    def _k_fits(self) -> TrainSpec:
        # k is the active count (TopK family) or JumpReLU's default target L0; ReLU has none.
        if self.d_sae is not None and self.k >= self.d_sae and self.architecture != "relu":
            raise ValueError(f"k must be < d_sae ({self.d_sae}), got {self.k}")
        if self.lr_warmup_frac + self.lr_decay_frac > 1:
            raise ValueError("lr_warmup_frac + lr_decay_frac must be <= 1")
        g = self.matryoshka_groups
        if not g or any(f <= 0 for f in g) or abs(sum(g) - 1) > 1e-6:
            raise ValueError(f"matryoshka_groups must be positive fractions summing to 1, got {g}")
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
    batch_contexts: int = Field(32, ge=1)
    device: str | None = None

    @field_validator("sae")
    @classmethod
    def _sae_is_an_id(cls, v: str) -> str:
        return check_id(v, "sae")  # it becomes a folder name
