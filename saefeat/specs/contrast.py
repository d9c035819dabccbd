"""ContrastSpec: which of an SAE's features tell two corpora apart.

Each side is an activation set (`a`, `b`), or text sources (`a_corpus`, `b_corpus`) that
the contrast harvests first with the SAE's model, revision, hook and context settings
(saefeat/analysis/contrast_corpora.py). A contrast compares documents; in a corpus side
a plain-text file is split into documents at blank lines (one per paragraph), and each
side is checked to hold enough of them before anything is harvested.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from saefeat.specs.base import Id, Spec
from saefeat.specs.harvest import CorpusSource

CORPUS_HELP = (
    "instead of {side}: the text sources of corpus {SIDE}, harvested first with the SAE's "
    "model, revision, hook and context settings; a plain-text file is split into "
    "documents at blank lines (one per paragraph), a JSONL/Parquet row is one"
)


class ContrastSpec(Spec):
    ID_PREFIX = "ct"
    # alpha names the work: it decides the stored significant counts and top lists.
    ID_FIELDS = ("sae", "a", "b", "window", "alpha", "classifier_features", "test_fraction",
                 "seed")  # fmt: skip
    # Joined later (corpora given as files): hashed only when set, so ids made before stay.
    ID_FIELDS_IF_SET = ("a_corpus", "b_corpus", "token_budget")
    RUN_FIELDS = ("top", "batch_contexts", "device")

    sae: Id = Field(description="SAE id")
    a: Id | None = Field(None, description="Activation set id of corpus A (or a_corpus)")
    b: Id | None = Field(None, description="Activation set id of corpus B (or b_corpus)")
    # Validated even when left out: each side's check (below) sees both of its fields.
    a_corpus: list[CorpusSource] | None = Field(
        None,
        min_length=1,
        validate_default=True,
        description=CORPUS_HELP.format(side="a", SIDE="A"),
    )
    b_corpus: list[CorpusSource] | None = Field(
        None,
        min_length=1,
        validate_default=True,
        description=CORPUS_HELP.format(side="b", SIDE="B"),
    )
    token_budget: int = Field(
        100_000, gt=0, description="tokens harvested from each of a_corpus and b_corpus"
    )
    # Length control: 32, the example window length delphi uses.
    window: int = Field(
        32, ge=1, le=4096, description="document firing counts each document's first N tokens"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="FDR level (q-value) of 'significant'")
    top: int = Field(20, ge=1, le=1000, description="Features listed per side")
    classifier_features: int = Field(
        32, ge=1, le=4096, description="top features the held-out classifier uses"
    )
    test_fraction: float = Field(0.3, gt=0, lt=1, description="documents held out for AUROC")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="the held-out split's seed (sklearn's range)"
    )
    batch_contexts: int = Field(32, ge=1, le=4096, description="contexts per SAE pass")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda if any)")

    @field_validator("b")
    @classmethod
    def _two_sets(cls, v: str | None, info) -> str | None:
        if v is not None and v == info.data.get("a"):
            raise ValueError("is the same set as a; a contrast needs two sets")
        return v

    @field_validator("a_corpus", "b_corpus", mode="before")
    @classmethod
    def _corpus_from_strings(cls, v):
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            return [{"path": s} if isinstance(s, str) else s for s in v]
        return v

    @field_validator("a_corpus", "b_corpus")
    @classmethod
    def _each_side_once(cls, v: list[CorpusSource] | None, info):
        """A side is a set id or text sources, one of the two (the error names the
        side's corpus field); b_corpus is not a_corpus again."""
        side = info.field_name.removesuffix("_corpus")
        if side not in info.data:  # the set id itself was refused
            return v
        if v is None and info.data[side] is None:
            raise ValueError(f"side {side.upper()} needs {side} (an activation set id) or "
                             f"{side}_corpus (text sources)")  # fmt: skip
        if v is not None and info.data[side] is not None:
            raise ValueError(f"give {side} or {side}_corpus, not both")
        if side == "b" and v is not None and v == info.data.get("a_corpus"):
            raise ValueError("is the same corpus as a_corpus; a contrast needs two corpora")
        return v

    def corpus_sides(self) -> list[str]:
        """The sides given as text sources ("a", "b"): the contrast harvests them."""
        return [side for side in ("a", "b") if getattr(self, side) is None]

    def contrast_id(self) -> str:
        return self.content_id()
