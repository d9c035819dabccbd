"""ORM rows -> response bodies. Kept apart so routes read as what they answer."""

from __future__ import annotations

from sqlalchemy.orm import Session

from saefeat.api.schemas import (
    Example,
    FeatureDetail,
    FeatureSummary,
    Histogram,
    LabelMatchOut,
    LabelOut,
    NeighbourOut,
    Projection,
    ProjectionToken,
    SaeDetail,
    SaeSummary,
    TokenMatchOut,
)
from saefeat.storage.catalog import labels, queries
from saefeat.storage.catalog.label_search import LabelMatch
from saefeat.storage.catalog.labels import Votes
from saefeat.storage.catalog.models import SAE, Feature, FeatureExample, Label, VocabToken
from saefeat.storage.catalog.queries import NeighbourMatch, TokenMatch


def sae_summary(sae: SAE) -> SaeSummary:
    return SaeSummary(
        id=sae.id,
        name=sae.name,
        model=sae.model_name,
        hook=sae.hook_name,
        architecture=sae.architecture,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        k=sae.k,
        metrics=sae.metrics or {},
        created_at=sae.created_at,
    )


def sae_detail(sae: SAE, n_features_indexed: int) -> SaeDetail:
    return SaeDetail(
        **sae_summary(sae).model_dump(),
        cfg=sae.cfg or {},
        activation_set_id=sae.activation_set_id,
        n_features_indexed=n_features_indexed,
    )


def label_out(label: Label | None, votes: Votes | None = None) -> LabelOut | None:
    if label is None:
        return None
    votes = votes or Votes()
    return LabelOut(
        votes_up=votes.up,
        votes_down=votes.down,
        id=label.id,
        text=label.text,
        source=label.source,  # type: ignore[arg-type]
        author=label.author,
        score=label.score,
        created_at=label.created_at,
    )


def feature_summary(feature: Feature, label: Label | None) -> FeatureSummary:
    return FeatureSummary(
        sae_id=feature.sae_id,
        index=feature.index,
        density=feature.density,
        max_activation=feature.max_activation,
        mean_activation=feature.mean_activation,
        label=label.text if label else None,
    )


def example(row: FeatureExample) -> Example:
    return Example(
        kind=row.kind,  # type: ignore[arg-type]
        rank=row.rank,
        activation=row.activation,
        context_index=row.context_index,
        position=row.position,
        focus=row.focus,
        tokens=row.token_strs,
        token_ids=row.token_ids,
        values=row.values,
    )


def projection(sides: dict[str, list[VocabToken]]) -> Projection:
    def tokens(rows: list[VocabToken]) -> list[ProjectionToken]:
        return [
            ProjectionToken(rank=t.rank, token_id=t.token_id, token=t.token_str, value=t.value)
            for t in rows
        ]

    return Projection(top=tokens(sides["top"]), bottom=tokens(sides["bottom"]))


def feature_detail(
    feature: Feature,
    examples: list[FeatureExample],
    sides: dict[str, list[VocabToken]],
    label: Label | None,
) -> FeatureDetail:
    histogram = Histogram(**feature.histogram) if feature.histogram else None
    return FeatureDetail(
        sae_id=feature.sae_id,
        index=feature.index,
        density=feature.density,
        max_activation=feature.max_activation,
        mean_activation=feature.mean_activation,
        histogram=histogram,
        examples=[example(e) for e in examples],
        projection=projection(sides),
        label=label_out(label),
    )


def load_feature_detail(
    session: Session, feature: Feature
) -> tuple[FeatureDetail, list[Label], Votes]:
    """A feature's full detail with its current label, plus the label history and votes
    (the JSON route and the page both show them)."""
    history = labels.label_history(session, feature.id)
    votes = labels.label_votes(session, [lb.id for lb in history])
    current = labels.pick_current_label(history, votes)
    detail = feature_detail(
        feature,
        queries.feature_examples(session, feature.id),
        queries.feature_projection(session, feature.id),
        None,
    )
    detail.label = label_out(current, votes.get(current.id) if current else None)
    return detail, history, votes


def token_match(match: TokenMatch, label: Label | None) -> TokenMatchOut:
    return TokenMatchOut(
        sae_id=match.feature.sae_id,
        index=match.feature.index,
        density=match.feature.density,
        max_activation=match.feature.max_activation,
        token=match.token_str,
        token_id=match.token_id,
        rank=match.rank,
        value=match.value,
        label=label.text if label else None,
    )


def label_match(match: LabelMatch, votes: Votes | None) -> LabelMatchOut:
    return LabelMatchOut(
        sae_id=match.feature.sae_id,
        index=match.feature.index,
        density=match.feature.density,
        max_activation=match.feature.max_activation,
        label=label_out(match.label, votes),  # type: ignore[arg-type]
    )


def neighbour(match: NeighbourMatch, label: Label | None) -> NeighbourOut:
    return NeighbourOut(
        sae_id=match.feature.sae_id,
        index=match.feature.index,
        rank=match.rank,
        cosine=match.cosine,
        density=match.feature.density,
        label=label.text if label else None,
    )
