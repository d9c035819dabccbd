"""Automatic explanations in the catalog: each is an auto label (author = the explainer)
with an `explanations` row saying how it was made and one `explanation_scores` row per
scorer. A label's own `score` column holds its headline score, so the current-label rule
(labels.pick_current_label: a human label wins; else the best-scored auto label) needs
nothing new.

Scores, one scale: every score type in SCORE_TYPES is in [0, 1], 0.5 is chance and 1 is
perfect; SCORE_MEANINGS says what each one measures (the API and the feature page show
it beside the value). The headline score of an explanation, and so the rule that picks
the one shown among several explainers' (offline, patchscope, llm), is the mean of its
scores (`headline_score`); every explainer's output in a job is scored by the same
scorers, so the means compare like with like.

`activation_sd` is the activation score as it was before revision 0014 (standard
deviations above the pool mean, not in [0, 1]): 0014 renamed the stored rows to it and
left them out of every headline; a rerun of `saefeat explain` scores anew."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.orm import Session

from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.models import (
    Explanation,
    ExplanationScore,
    Feature,
    Label,
)
from saefeat.storage.catalog.queries import run

EXPLAINERS = ("offline", "patchscope", "llm")  # an explain job runs them in this order
SCORE_TYPES = ("detection", "fuzzing", "embedding", "activation", "keyword")
NO_JUDGE = ("embedding", "activation", "keyword")  # the score types that need no judge LLM
ENCODER_SCORERS = ("embedding", "activation")  # the ones that need the sentence encoder
STALE_SCORE_TYPES = ("activation_sd",)  # kept for history, in no headline (revision 0014)
# What each score means, in one place: the API's ScoreOut.meaning and the page's
# explanation table read it. All of SCORE_TYPES are in [0, 1] with 0.5 = chance.
SCORE_MEANINGS: dict[str, str] = {
    "detection": "Balanced accuracy of a judge LLM telling, from the explanation, held-out "
    "windows where the feature fires from random ones where it does not (0.5 = chance, "
    "1 = always right)",
    "fuzzing": "Balanced accuracy of a judge LLM telling windows with the tokens the "
    "feature fires on marked from the same windows with other tokens marked (0.5 = "
    "chance, 1 = always right)",
    "embedding": "AUROC: the chance that a held-out window where the feature fires is "
    "closer to the explanation (sentence-encoder cosine) than a random window where it "
    "does not (0.5 = chance, 1 = every firing window ranks first)",
    "activation": "AUROC: the chance that the feature fires more on a window the "
    "explanation retrieves (the pool windows holding most of its words, nearest under a "
    "sentence encoder among equals) than on another pool window "
    "(0.5 = the explanation finds no better text than chance, 1 = every retrieved "
    "window beats every other)",
    "keyword": "AUROC: the chance that a held-out window where the feature fires holds "
    "more of the explanation's words (the tokens it says the feature fires on) than a "
    "random window where it does not (0.5 = chance, 1 = every firing window holds more)",
    "activation_sd": "Stale (before revision 0014): the feature's mean activation on "
    "the retrieved windows in standard deviations above the pool mean, not in [0, 1]; "
    "rerun `saefeat explain` for the AUROC",
}


@dataclass
class ScoreIn:
    type: str
    value: float
    n: int
    details: dict[str, Any] = field(default_factory=dict)
    scorer_model: str | None = None


def headline_score(scores: Iterable[ScoreIn]) -> float | None:
    """The mean of the explanation's scores of SCORE_TYPES (all in [0, 1]); None when it
    has none. The best of these among a feature's auto labels is the one shown."""
    values = [s.value for s in scores if s.type in SCORE_TYPES]
    return float(sum(values) / len(values)) if values else None


def scores_in_unit_interval(session: Session, sae_id: str | None = None) -> bool:
    """Every stored score of SCORE_TYPES (of one SAE's features, or of all) is a finite
    number in [0, 1]: the one-scale check the bench reports."""
    query = select(func.count()).select_from(ExplanationScore).where(
        ExplanationScore.type.in_(SCORE_TYPES),
        or_(ExplanationScore.value < 0, ExplanationScore.value > 1,
            ExplanationScore.value != ExplanationScore.value),  # NaN is unequal to itself
    )  # fmt: skip
    if sae_id is not None:
        query = (
            query.join(Label, Label.id == ExplanationScore.label_id)
            .join(Feature, Feature.id == Label.feature_id)
            .where(Feature.sae_id == sae_id)
        )
    return session.execute(query).scalar_one() == 0


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
