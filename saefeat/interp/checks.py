"""Do the scores mean anything? Two checks the benchmark (bench/readable.py) reports.

`own_vs_neighbour_auroc(session, settings, sae_id, features)`: for each feature, its own
explanation and the explanation of its nearest decoder neighbour (the first live one in
table `neighbours`, by decoder cosine: the feature most like it, so a much harder foil
than a random other feature's) are both scored, by each scorer, on the feature's own
held-out windows and pool. A scorer that tracks quality gives the own explanation the
higher score; its AUROC is the chance that an own score beats a neighbour's score (ties
count half), over all the features: 0.5 = it cannot tell them apart, 1 = always. The
paired form (own beats the neighbour's on the same feature) is in `NeighbourCheck`.
On the demo SAE (SmolLM2-135M layer 15, 100 random live features, the label the job
shows): keyword 0.795, activation 0.713, embedding 0.707; before issue 21 (offline-v2
labels, the activation score in standard deviations): activation 0.660, embedding 0.691.

`scores_in_unit_interval(session, sae_id)`: every stored score of the current types is in
[0, 1] (storage/catalog/explanations.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.config import Settings
from saefeat.interp.evidence import FeatureEvidence
from saefeat.interp.metrics import auroc
from saefeat.interp.pool import ScoringPool
from saefeat.interp.scorers import NotScorable, Scorer
from saefeat.storage.catalog.explanations import (
    NO_JUDGE,
    headline_score,
    scores_in_unit_interval,
)
from saefeat.storage.catalog.models import Feature, Neighbour

__all__ = ["NeighbourCheck", "discriminate", "own_vs_neighbour", "own_vs_neighbour_auroc",
           "scores_in_unit_interval"]  # fmt: skip


@dataclass
class Pair:
    """One feature, its own explanation and its neighbour's, each scorer's two scores."""

    index: int
    neighbour: int
    own: str
    theirs: str
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)  # (own, neighbour's)


@dataclass
class NeighbourCheck:
    auroc: dict[str, float]  # scorer -> AUROC of own vs neighbour's scores
    paired: dict[str, float]  # scorer -> share of features where own beats it (ties half)
    n: dict[str, int]  # scorer -> features scored
    pairs: list[Pair]

    @property
    def best(self) -> float | None:
        return max(self.auroc.values(), default=None)


def discriminate(
    cases: Iterable[tuple[FeatureEvidence, str, str, int]],
    scorers: list[Scorer],
    pool: ScoringPool,
) -> NeighbourCheck:
    """Score each (evidence, own text, neighbour's text, neighbour index) with every scorer
    on the feature's own evidence and pool; the AUROC and paired win rate per scorer. A
    scorer with nothing to score on for a feature (NotScorable) leaves that feature out
    of its numbers."""
    pairs: list[Pair] = []
    for ev, own, theirs, neighbour in cases:
        pair = Pair(ev.index, neighbour, own, theirs)
        for scorer in scorers:
            try:
                a = scorer.score(own, ev, pool).value
                b = scorer.score(theirs, ev, pool).value
            except NotScorable:
                continue
            pair.scores[scorer.name] = (float(a), float(b))
        pairs.append(pair)
    out = NeighbourCheck({}, {}, {}, pairs)
    for scorer in scorers:
        both = np.array([p.scores[scorer.name] for p in pairs if scorer.name in p.scores])
        if len(both) == 0:
            continue
        own, theirs = both[:, 0], both[:, 1]
        out.auroc[scorer.name] = auroc(own, theirs)
        out.paired[scorer.name] = float(np.mean((own > theirs) + 0.5 * (own == theirs)))
        out.n[scorer.name] = len(both)
    return out


def nearest_live_neighbours(session: Session, sae_id: str, indices: list[int]) -> dict[int, int]:
    """Feature index -> the index of its nearest decoder neighbour that fires (table
    neighbours, by rank); features without one are absent."""
    f, g = Feature.__table__.alias("f"), Feature.__table__.alias("g")
    rows = session.execute(
        select(f.c.index, g.c.index, Neighbour.rank)
        .join(Neighbour, Neighbour.feature_id == f.c.id)
        .join(g, g.c.id == Neighbour.neighbour_feature_id)
        .where(f.c.sae_id == sae_id, f.c.index.in_(indices), g.c.max_activation > 0)
        .order_by(f.c.index, Neighbour.rank)
    ).all()  # fmt: skip
    out: dict[int, int] = {}
    for index, neighbour, _ in rows:
        out.setdefault(int(index), int(neighbour))
    return out


def own_vs_neighbour(
    session: Session,
    settings: Settings,
    sae_id: str,
    features: list[int],
    *,
    explainer: str = "offline,patchscope",
    scorers: tuple[str, ...] = NO_JUDGE,
    pool_contexts: int = 256,
    seed: int = 0,
    pool: ScoringPool | None = None,
) -> NeighbourCheck:
    """`own_vs_neighbour_auroc` with the pairs and paired win rates (module docstring).

    Each feature's and each neighbour's explanation is made afresh by `explainer` (one
    name or several joined by commas: then each gets the text the explain job would show,
    the best by the mean of its scores on its own windows), so the check does not depend
    on what was explained before. Give `pool` to reuse a scoring pool."""
    from saefeat.interp.catalog_io import prepare
    from saefeat.interp.encoder import sentence_encoder
    from saefeat.interp.explainers import make_explainer
    from saefeat.interp.scorers import EmbeddingCache, make_scorers
    from saefeat.specs import ExplainSpec
    from saefeat.storage.catalog.explanations import ENCODER_SCORERS

    spec = ExplainSpec(sae=sae_id, features=features, explainer=explainer, scorers=list(scorers),
                       pool_contexts=pool_contexts, seed=seed)  # fmt: skip
    plan = prepare(spec, settings, [])  # no explainer: nothing counts as done
    live = [i for i in features if plan.feature_ids[i][2] > 0]
    near = nearest_live_neighbours(session, sae_id, live)
    live = [i for i in live if i in near]
    everyone = sorted(set(live) | {near[i] for i in live})
    evidence = {ev.index: ev for ev in plan.load_evidence(session, everyone)}
    if pool is None:
        pool = plan.build_pool(settings)
    needs_encoder = any(n in ENCODER_SCORERS for n in spec.scorers)
    embed = EmbeddingCache(sentence_encoder()) if needs_encoder else None
    scoring = make_scorers(spec.scorers, embed=embed, client=None, seed=seed)
    texts = _best_texts(
        [make_explainer(n, None, plan.subject()) for n in spec.explainers],
        [evidence[i] for i in everyone],
        scoring,
        pool,
    )
    cases = [(evidence[i], texts[i], texts[near[i]], near[i]) for i in live
             if i in texts and near[i] in texts]  # fmt: skip
    return discriminate(cases, scoring, pool)


def own_vs_neighbour_auroc(
    session: Session, settings: Settings, sae_id: str, features: list[int], **options
) -> dict[str, float]:
    """{scorer: AUROC of the features' own explanations' scores against their nearest
    decoder neighbours' explanations' scores, on the features' own windows} (module
    docstring; options as `own_vs_neighbour`). Target: the best scorer >= 0.75."""
    return own_vs_neighbour(session, settings, sae_id, features, **options).auroc


def _best_texts(
    explainers: list, evidence: list[FeatureEvidence], scorers: list[Scorer], pool: ScoringPool
) -> dict[int, str]:
    """Feature index -> the text the explain job would show: the only explainer's, or the
    one whose scores on the feature's own windows have the best mean (headline_score)."""
    from saefeat.interp.explainers import explain_all

    made = {e.name: explain_all(e, evidence) for e in explainers}
    out: dict[int, str] = {}
    for k, ev in enumerate(evidence):
        options = [texts[k] for texts in made.values() if isinstance(texts[k], str)]
        if len(options) == 1:
            out[ev.index] = options[0]
        elif options:
            out[ev.index] = max(options, key=lambda t: _headline(t, ev, scorers, pool))
    return out


def _headline(text: str, ev: FeatureEvidence, scorers: list[Scorer], pool: ScoringPool) -> float:
    scores = []
    for scorer in scorers:
        try:
            scores.append(scorer.score(text, ev, pool))
        except NotScorable:
            pass
    value = headline_score(scores)
    return -1.0 if value is None else value
