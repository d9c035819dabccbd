"""HarvestSpec: a model's activations at some hooks over a corpus.

A paired harvest (`paired_model`, for model diffing) is one job that fills two sets on
identical tokens: `sides()` are the plain specs of each model, so each side's set id is
the one a plain harvest of that model would have, and an existing set is reused.
Whether the two models share a tokenizer is saefeat/pairing.py's check."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from saefeat.lm import EMBEDDED_MODEL, parse_hook
from saefeat.paths import BUILTIN_PYTHON_DOCS
from saefeat.specs.base import Spec


class CorpusSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        BUILTIN_PYTHON_DOCS,
        description="a text/JSONL/Parquet file, a folder of them, or builtin:python-docs",
    )
    field: str = Field("text", description="the JSONL / Parquet / dataset column holding text")
    weight: float = Field(
        1.0, gt=0, allow_inf_nan=False,
        description="share of the mixed stream's text (by characters) against the other sources",
    )  # fmt: skip


class HarvestSpec(Spec):
    ID_PREFIX = "as"
    ID_FIELDS = (
        "model", "revision", "model_dtype", "hooks", "corpus", "ctx_len", "bos",
        "token_budget", "contexts_per_shard", "storage_dtype", "on_bad_document", "on_nonfinite",
    )  # fmt: skip
    # Joined later: hashed only when set, so every set id made before stays.
    ID_FIELDS_IF_SET = ("text_documents", "paired_model", "paired_revision")
    RUN_FIELDS = ("batch_size", "workers", "device", "max_shard_attempts")

    model: str = Field(EMBEDDED_MODEL, description="HF id, local model folder, or .gguf file")
    revision: str | None = Field(None, description="the model's revision (branch, tag, commit)")
    paired_model: str | None = Field(
        None, description="also harvest this model on the same tokens, into a set of its own "
        "(model diffing); its tokenizer must be the model's",
    )  # fmt: skip
    paired_revision: str | None = Field(
        None, description="the paired model's revision (branch, tag, commit)"
    )
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype the model runs in (auto: bf16 on a GPU, fp32 on a CPU)"
    )
    hooks: list[str] = Field(min_length=1, description="hook names, e.g. blocks.15.hook_resid_post")
    corpus: list[CorpusSource] = Field(
        default_factory=lambda: [CorpusSource()], min_length=1,
        description="the text sources, mixed by weight",
    )  # fmt: skip
    ctx_len: int = Field(128, ge=2, le=1 << 16, description="tokens per context")
    bos: Literal["context", "document", "none"] = Field(
        "context", description="where a BOS token goes: each context, each document, nowhere"
    )
    token_budget: int = Field(100_000, gt=0, description="tokens to harvest")
    contexts_per_shard: int = Field(
        64, ge=1, le=1 << 16, description="contexts per shard (one shard is held in memory)"
    )
    # zarr has no bfloat16: it is stored as its raw uint16 bits (see storage/activations.py).
    storage_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the activations are stored in"
    )
    on_bad_document: Literal["skip", "fail"] = Field(
        "fail", description="a binary or non-UTF-8 document: fail naming the file, or skip it"
    )
    text_documents: Literal["file", "paragraphs"] = Field(
        "file",
        description="a plain-text file is one document, or one per paragraph: documents "
        "are split at blank lines and packed back to back (a contrast's harvests use this)",
    )
    on_nonfinite: Literal["fail", "drop"] = Field(
        "fail", description="NaN/Inf activations: fail the job, or drop that context"
    )
    batch_size: int = Field(8, ge=1, description="contexts per forward pass")
    workers: int | None = Field(
        None, ge=1, description="worker processes (default: one per GPU, else one)"
    )
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda if any)")
    max_shard_attempts: int = Field(
        3, ge=1, le=100, description="a shard whose worker dies this often is skipped"
    )

    @field_validator("hooks")
    @classmethod
    def _hooks_are_names(cls, hooks: list[str]) -> list[str]:
        for h in hooks:
            parse_hook(h)  # SpecError names the allowed form
        if len(set(hooks)) != len(hooks):
            raise ValueError("hooks are repeated")
        return hooks

    @field_validator("paired_revision")
    @classmethod
    def _revision_of_a_paired_model(cls, revision: str | None, info) -> str | None:
        if revision is not None and info.data.get("paired_model") is None:
            raise ValueError("a paired revision needs paired_model")
        return revision

    @field_validator("corpus", mode="before")
    @classmethod
    def _corpus_from_strings(cls, v):
        if isinstance(v, str):
            v = [v]
        return [{"path": s} if isinstance(s, str) else s for s in v]

    def sides(self) -> list[HarvestSpec]:
        """The plain harvest of each model: this spec without the pairing, then (when
        paired) the same with the paired model and revision. Each fills its own set."""
        plain = self.model_copy(update={"paired_model": None, "paired_revision": None})
        if self.paired_model is None:
            return [plain]
        paired = {"model": self.paired_model, "revision": self.paired_revision}
        return [plain, plain.model_copy(update=paired)]

    def set_ids(self) -> list[str]:
        """Every set this harvest fills: the model's, then the paired model's (if any)."""
        return [side.content_id() for side in self.sides()]

    def set_id(self) -> str:
        """The activation set this harvest fills (a paired one: the model's, its first
        side's): a repeated spec reuses it. Not the job's hash: a paired harvest's
        content id also names the paired model."""
        return self.set_ids()[0]
