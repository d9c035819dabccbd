"""The points of an SAE's map: each feature's place on the UMAP of decoder directions
(features.umap_x/umap_y, written at index time) with what the map colours it by."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from saefeat.storage.catalog import labels
from saefeat.storage.catalog.models import Feature, Label

MAX_POINTS = 20_000  # an inline SVG past this weighs megabytes; the most frequent are kept


@dataclass(frozen=True, slots=True)
class MapPoint:
    index: int
    x: float
    y: float
    density: float
    label: str | None  # the current label's text
    score: float | None  # its score, when it was scored


@dataclass
class FeatureMap:
    points: list[MapPoint]
    n_placed: int  # features with coordinates (points holds at most MAX_POINTS of them)


def feature_map(session: Session, sae_id: str, limit: int = MAX_POINTS) -> FeatureMap:
    """The placed features of SAE `sae_id` (the `limit` most frequent when there are
    more), each with its current label and score."""
    placed = (Feature.sae_id == sae_id) & Feature.umap_x.is_not(None) & Feature.umap_y.is_not(None)
    n_placed = session.scalar(select(func.count()).select_from(Feature).where(placed)) or 0
    rows = session.execute(
        select(Feature.id, Feature.index, Feature.umap_x, Feature.umap_y, Feature.density)
        .where(placed)
        .order_by(Feature.density.desc(), Feature.index)
        .limit(limit)
    ).all()
    labelled = set(session.scalars(
        select(Label.feature_id).distinct()
        .join(Feature, Feature.id == Label.feature_id).where(placed)
    ))  # fmt: skip
    current = labels.current_labels(session, [r.id for r in rows if r.id in labelled])
    points = []
    for r in rows:
        lb = current.get(r.id)
        points.append(MapPoint(r.index, r.umap_x, r.umap_y, r.density,
                               lb.text if lb else None, lb.score if lb else None))  # fmt: skip
    points.sort(key=lambda p: p.index)
    return FeatureMap(points, n_placed)
