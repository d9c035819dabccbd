"""ContrastSpec: which of an SAE's features tell two activation sets apart."""

from __future__ import annotations

from pydantic import Field, field_validator

from saefeat.paths import check_id
from saefeat.specs.base import Spec


class ContrastSpec(Spec):
    ID_PREFIX = "ct"
    # alpha names the work: it decides the stored significant counts and top lists.
    ID_FIELDS = ("sae", "a", "b", "window", "alpha", "classifier_features", "test_fraction",
                 "seed")  # fmt: skip
    RUN_FIELDS = ("top", "batch_contexts", "device")

    sae: str = Field(description="SAE id")
    a: str = Field(description="Activation set id of corpus A")
    b: str = Field(description="Activation set id of corpus B")
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

    @field_validator("sae", "a", "b")
    @classmethod
    def _safe_ids(cls, v: str, info) -> str:
        return check_id(v, info.field_name)  # each becomes a folder name

    @field_validator("b")
    @classmethod
    def _two_sets(cls, v: str, info) -> str:
        if v == info.data.get("a"):
            raise ValueError("is the same set as a; a contrast needs two sets")
        return v

    def contrast_id(self) -> str:
        return self.content_id()
