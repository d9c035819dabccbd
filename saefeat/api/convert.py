"""ORM rows -> response bodies. Kept apart so routes read as what they answer."""

from __future__ import annotations

from typing import Any

import orjson

from saefeat.api.schemas import (
    FeatureSummary,
    LabelMatchOut,
    LabelOut,
    NeighbourOut,
    SaeDetail,
    SaeSummary,
    SourceOut,
    TokenMatchOut,
)
from saefeat.storage.catalog import labels
from saefeat.storage.catalog.documents import FeatureDocument
from saefeat.storage.catalog.explanations import (
    SCORE_MEANINGS,
    ExplanationView,
    headline_score,
)
from saefeat.storage.catalog.feature_reads import Effects, NeighbourMatch
from saefeat.storage.catalog.label_search import LabelMatch
from saefeat.storage.catalog.labels import LabelView, Votes
from saefeat.storage.catalog.models import SAE, Label
from saefeat.storage.catalog.queries import FeatureListView, FeatureRecord, FeatureView
from saefeat.storage.catalog.token_search import TokenMatch


def columns(row: Any, *names: str) -> dict[str, Any]:
    """The named attributes of a row (ORM or view), as the same-named fields of a body."""
    return {name: getattr(row, name) for name in names}


def sae_kind(sae: SAE) -> str:
    """sae, transcoder (an output hook) or crosscoder (sources, in its cfg)."""
    if (sae.cfg or {}).get("sources"):
        return "crosscoder"
    return "transcoder" if sae.hook_out_name else "sae"


def sae_summary(sae: SAE) -> SaeSummary:
    return SaeSummary(
        **columns(sae, "id", "name", "architecture", "d_in", "d_sae", "k", "created_at"),
        model=sae.model_name,
        hook=sae.hook_name,
        hook_out=sae.hook_out_name,
        kind=sae_kind(sae),
        sources=[SourceOut(**{k: s.get(k) for k in SourceOut.model_fields}) for s in sources]
        if (sources := (sae.cfg or {}).get("sources"))
        else None,
        metrics=sae.metrics or {},
    )


def sae_detail(sae: SAE, n_features_indexed: int) -> SaeDetail:
    return SaeDetail(
        **sae_summary(sae).model_dump(),
        cfg=sae.cfg or {},
        activation_set_id=sae.activation_set_id,
        n_features_indexed=n_features_indexed,
    )


def label_out(label: Label | LabelView | None, votes: Votes | None = None) -> LabelOut | None:
    if label is None:
        return None
    votes = votes or Votes()
    return LabelOut(
        votes_up=votes.up,
        votes_down=votes.down,
        **columns(label, "id", "text", "source", "author", "score", "created_at"),
    )


def _stats(feature: FeatureView | FeatureRecord) -> dict[str, Any]:
    """The fields of FeatureStats, which every feature listing starts with."""
    return columns(feature, "sae_id", "index", "density", "max_activation", "artifact")


def crosscoder_fields(feature: FeatureListView | FeatureRecord) -> dict[str, Any]:
    """A crosscoder feature's decoder norms per source, relative norm and class (all
    None for an SAE's or a transcoder's)."""
    return columns(feature, "decoder_norms", "relative_norm", "sharing")


def feature_summary(feature: FeatureListView, label: LabelView | None) -> FeatureSummary:
    return FeatureSummary(**_stats(feature), mean_activation=feature.mean_activation,
                          **crosscoder_fields(feature),
                          label=label.text if label else None)  # fmt: skip


def current_label_out(state: labels.LabelState, feature_id: int) -> LabelOut | None:
    current = state.current(feature_id)
    return label_out(current, state.votes.get(current.id) if current else None)


def effects_out(effects: Effects | None) -> dict[str, Any]:
    """TokenEffectsOut's fields: per method, its up and down lists (empty when none)."""
    effects = effects or {}
    return {
        method: {
            side: [{"rank": e.rank, "token_id": e.token_id, "token": e.token_str,
                    "value": e.value} for e in effects.get(method, {}).get(side, [])]
            for side in ("up", "down")
        }
        for method in ("measured", "debiased")
    }  # fmt: skip


def _detail_fields(
    feature: FeatureRecord, document: FeatureDocument, effects: Effects | None = None
) -> dict[str, Any]:
    # The database-built arrays go in unparsed (orjson.Fragment): no per-row Python work.
    return {
        "max_activation": feature.max_activation,  # feature.js scales the examples by it
        "histogram": feature.histogram,
        "examples": orjson.Fragment(document.examples),
        "projection": {
            "top": orjson.Fragment(document.projection_top),
            "bottom": orjson.Fragment(document.projection_bottom),
        },
        "effects": effects_out(effects),
    }


def explanation_out(row: ExplanationView) -> dict[str, Any]:
    return {
        "label_id": row.label_id,
        "text": row.text,
        "explainer": row.explainer,
        "explainer_model": row.explainer_model,
        "prompt_version": row.prompt_version,
        "evidence": row.evidence,
        "created_at": row.created_at,
        "scores": [
            {"type": s.type, "value": s.value, "meaning": SCORE_MEANINGS.get(s.type, ""),
             "n": s.n, "scorer_model": s.scorer_model, "details": s.details,
             "created_at": s.created_at}
            for s in row.scores
        ],
        "headline": headline_score(row.scores),
    }  # fmt: skip


def feature_detail_json(
    feature: FeatureRecord,
    document: FeatureDocument,
    label: LabelOut | None,
    explained: list[ExplanationView] = (),  # type: ignore[assignment]
    effects: Effects | None = None,
) -> bytes:
    """The body of a FeatureDetail (tests/api validate it against the model)."""
    return orjson.dumps(
        {
            **_stats(feature),  # max_activation again in _detail_fields: the same value
            "mean_activation": feature.mean_activation,
            **crosscoder_fields(feature),
            **_detail_fields(feature, document, effects),
            "label": label.model_dump(mode="json") if label else None,
            "explanations": [explanation_out(e) for e in explained],
        }
    )


def script_json(
    feature: FeatureRecord, document: FeatureDocument, effects: Effects | None = None
) -> str:
    """What static/feature.js draws (examples, histogram, projection), as JSON that is safe
    inside a <script> element: "<", ">" and "&" become JSON unicode escapes, so no token
    text can close the element."""
    data = orjson.dumps(_detail_fields(feature, document, effects)).decode()
    return data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def token_match(match: TokenMatch, label: LabelView | None) -> TokenMatchOut:
    return TokenMatchOut(
        **_stats(match.feature),
        token=match.token_str,
        token_id=match.token_id,
        rank=match.rank,
        value=match.value,
        label=label.text if label else None,
    )


def label_match(match: LabelMatch, votes: Votes | None) -> LabelMatchOut:
    return LabelMatchOut(
        **_stats(match.feature),
        label=label_out(match.label, votes),  # type: ignore[arg-type]
    )


def neighbour(match: NeighbourMatch, label: LabelView | None) -> NeighbourOut:
    return NeighbourOut(
        sae_id=match.feature.sae_id,
        index=match.feature.index,
        rank=match.rank,
        cosine=match.cosine,
        density=match.feature.density,
        label=label.text if label else None,
    )
