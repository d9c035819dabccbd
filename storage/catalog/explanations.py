"""Automatic explanations in the catalog: each is an auto label (author = the explainer)
with an `explanations` row saying how it was made and one `explanation_scores` row per
scorer. A label's own `score` column holds its headline score, so the current-label rule
(a human label wins; else the best-scored auto label) needs nothing new."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.models import (
    Explanation,
    ExplanationScore,
    Feature,
    Label,
)
from saefeat.storage.catalog.queries import run

# The score a label is ranked by when no type is named: the first of these it has. All
# three are in [0, 1] with 0.5 for chance; activation (standard deviations) is not.
HEADLINE_ORDER = ("detection", "embedding", "fuzzing")
SCORE_TYPES = ("detection", "fuzzing", "embedding", "activation")
NO_JUDGE = ("embedding", "activation")  # the score types that need no judge LLM


@dataclass
class ScoreIn:
    type: str
    value: float
    n: int
    details: dict[str, Any] = field(default_factory=dict)
    scorer_model: str | None = None


def headline_score(scores: Iterable[ScoreIn]) -> float | None:
    by_type = {s.type: s.value for s in scores}
    return next((by_type[t] for t in HEADLINE_ORDER if t in by_type), None)


def write_explanation(
    session: Session,
    feature_id: int,
    *,
    text: str,
    explainer: str,
    explainer_model: str | None,
    prompt_version: str,
    evidence: dict[str, Any],
    scores: list[ScoreIn],
) -> int:
    """Add the explanation as an auto label with its scores; returns the label id. The
    caller commits, so a feature's label and scores land together or not at all."""

    class _Feature:  # add_label only needs the id
        id = feature_id

    label = add_label(
        session,
        _Feature,
        text=text,
        source="auto",
        author=explainer,
        score=headline_score(scores),
    )
    session.add(
        Explanation(
            label_id=label.id,
            feature_id=feature_id,
            explainer=explainer,
            explainer_model=explainer_model,
            prompt_version=prompt_version,
            evidence=evidence,
        )
    )
    for s in scores:
        session.add(
            ExplanationScore(
                label_id=label.id,
                type=s.type,
                value=float(s.value),
                n=int(s.n),
                details=s.details,
                explainer_model=explainer_model,
                scorer_model=s.scorer_model,
                prompt_version=prompt_version,
            )
        )
    session.flush()
    return label.id


_EXPLAINED = (
    select(Feature.index)
    .join(Explanation, Explanation.feature_id == Feature.id)
    .where(
        Feature.sae_id == bindparam("sae_id"),
        Explanation.explainer == bindparam("explainer"),
        Explanation.prompt_version == bindparam("prompt_version"),
    )
)


def explained_indices(
    session: Session, sae_id: str, explainer: str, prompt_version: str
) -> set[int]:
    """Feature indices of the SAE already explained by this explainer and prompt version
    (what a resumed job skips)."""
    rows = run(
        session, _EXPLAINED, sae_id=sae_id, explainer=explainer, prompt_version=prompt_version
    )
    return {int(i) for (i,) in rows}


@dataclass(slots=True)
class ScoreView:
    type: str
    value: float
    n: int
    details: dict[str, Any]
    scorer_model: str | None
    created_at: datetime


@dataclass
class ExplanationView:
    label_id: int
    text: str
    explainer: str
    explainer_model: str | None
    prompt_version: str
    evidence: dict[str, Any]
    created_at: datetime
    scores: list[ScoreView]


_EXPLANATIONS_OF = (
    select(
        Label.id,
        Label.text,
        Explanation.explainer,
        Explanation.explainer_model,
        Explanation.prompt_version,
        Explanation.evidence,
        Explanation.created_at,
    )
    .join(Explanation, Explanation.label_id == Label.id)
    .where(Label.feature_id == bindparam("feature_id"))
    .order_by(Label.id.desc())
)
_SCORES_OF = (
    select(
        ExplanationScore.label_id,
        ExplanationScore.type,
        ExplanationScore.value,
        ExplanationScore.n,
        ExplanationScore.details,
        ExplanationScore.scorer_model,
        ExplanationScore.created_at,
    )
    .where(ExplanationScore.label_id.in_(bindparam("ids", expanding=True)))
    .order_by(ExplanationScore.label_id, ExplanationScore.type)
)


def label_scores(session: Session, label_ids: Iterable[int]) -> dict[int, list[ScoreView]]:
    """The scores of each of these labels (labels without any are absent)."""
    ids = list(label_ids)
    out: dict[int, list[ScoreView]] = {}
    if not ids:
        return out
    for label_id, *columns in run(session, _SCORES_OF, ids=ids):
        out.setdefault(label_id, []).append(ScoreView(*columns))
    return out


def feature_explanations(session: Session, feature_id: int) -> list[ExplanationView]:
    """The feature's automatic explanations, newest first, each with its scores."""
    rows = run(session, _EXPLANATIONS_OF, feature_id=feature_id).all()
    scores = label_scores(session, [r[0] for r in rows])
    return [ExplanationView(*r, scores.get(r[0], [])) for r in rows]
