"""Typed specs for each pipeline step: the same spec runs from the CLI, the API or a test."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from saefeat.corpus import BUILTIN_PYTHON_DOCS
from saefeat.lm import EMBEDDED_MODEL, parse_hook


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusSource(_Spec):
    path: str = BUILTIN_PYTHON_DOCS
    field: str = "text"  # the JSONL / Parquet / dataset column holding the text


# The fields that determine a harvest's data (its set id); the rest are execution knobs.
HARVEST_DATA_FIELDS = (
    "model", "revision", "model_dtype", "hooks", "corpus", "ctx_len", "bos",
    "token_budget", "contexts_per_shard", "storage_dtype",
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
    storage_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Execution knobs: they do not change the data, so they stay out of the set id.
    batch_size: int = Field(8, ge=1)
    workers: int | None = Field(None, ge=1)
    device: str | None = None

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


class TrainSpec(_Spec):
    activation_set: str  # set id
    hook: str | None = None  # default: the set's first hook
    architecture: Literal["topk"] = "topk"
    d_sae: int | None = Field(None, gt=0)  # default: expansion_factor x d_in
    expansion_factor: int = Field(8, gt=0)
    k: int = Field(32, gt=0)
    batch_size: int = Field(1024, gt=0)
    lr: float | None = Field(None, gt=0)  # default: sparsify's 2e-4 / sqrt(d_sae / 2^14)
    epochs: float = Field(1.0, gt=0)
    seed: int = 0
    device: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _k_fits(self) -> TrainSpec:
        if self.d_sae is not None and self.k >= self.d_sae:
            raise ValueError(f"k must be < d_sae ({self.d_sae}), got {self.k}")
        return self


class IndexSpec(_Spec):
    sae: str  # SAE id in the catalog
    n_examples: int = Field(20, ge=1, le=1000)
    window: int = Field(8, ge=0, le=128)  # tokens either side of the focus token
    n_vocab: int = Field(10, ge=1, le=200)
    batch_contexts: int = Field(32, ge=1)
    device: str | None = None
