"""ExplainSpec: which SAE, which features, which explainer and scorers."""

from __future__ import annotations

from pydantic import Field, field_validator

from saefeat.specs.base import Id, Spec
from saefeat.storage.catalog.explanations import EXPLAINERS, NO_JUDGE, SCORE_TYPES


class ExplainOptions(Spec):
    """Everything about an explain job but the SAE (the body of its HTTP route)."""

    features: list[int] | None = Field(
        None, description="Latent indices to explain; omit for every feature"
    )
    explainer: str = Field(
        "offline,patchscope",
        description="Any of offline (what a feature fires on and makes more likely, no "
        "model), patchscope (the SAE's own model decodes its direction), llm (the "
        "configured endpoint), joined by commas; every one's text is scored alike and the "
        "best scored is the label shown",
    )
    scorers: list[str] = Field(
        default_factory=lambda: list(NO_JUDGE),
        description=f"Any of {list(SCORE_TYPES)}, each in [0, 1] with 0.5 = chance; "
        "detection and fuzzing need a judge LLM",
    )
    n_explain: int = Field(10, ge=1, le=100, description="Top examples shown to the explainer")
    pool_contexts: int = Field(
        256, ge=4, le=100_000, description="Contexts cut into the scoring pool's windows"
    )
    batch_features: int = Field(64, ge=1, le=4096, description="Features per Ray task")
    # numpy's seed range: beyond it the job failed late with a raw ValueError.
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds the scoring pool's sampling")

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in SCORE_TYPES]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a scorer; use any of {list(SCORE_TYPES)}")
        return [t for t in SCORE_TYPES if t in names]

    @field_validator("explainer")
    @classmethod
    def _known_explainers(cls, text: str) -> str:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in EXPLAINERS]
        if unknown or not names:
            raise ValueError(
                f"{(unknown or [text])[0]!r} is not an explainer; use any of "
                f"{list(EXPLAINERS)}, joined by commas"
            )
        return ",".join(n for n in EXPLAINERS if n in names)

    @property
    def explainers(self) -> list[str]:
        """The explainer names, in the order a job runs them."""
        return self.explainer.split(",")

    @field_validator("features")
    @classmethod
    def _non_negative(cls, features: list[int] | None) -> list[int] | None:
        if features is not None:
            if any(i < 0 for i in features):
                raise ValueError("feature indices are >= 0")
            features = sorted(set(features))
        return features


class ExplainSpec(ExplainOptions):
    ID_PREFIX = "ex"
    ID_FIELDS = ("sae", "features", "explainer", "scorers", "n_explain", "pool_contexts", "seed")
    RUN_FIELDS = ("batch_features",)

    sae: Id = Field(description="SAE id in the catalog")
