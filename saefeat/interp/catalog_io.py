"""The explain job's reads and writes: which features to do, their evidence from the
catalog, the scoring pool from the SAE's activation set, and the finished features back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.config import Settings
from saefeat.errors import SpecError
from saefeat.interp.evidence import FeatureEvidence, split_examples
from saefeat.interp.pool import ScoringPool, build_pool, scoring_contexts
from saefeat.specs import ExplainSpec
from saefeat.storage.catalog import queries
from saefeat.storage.catalog.explanations import ScoreIn, explained_indices, write_explanation
from saefeat.storage.catalog.models import SAE, Feature

if TYPE_CHECKING:
    from saefeat.interp.explainers import Explainer

N_PROMOTED = 10


@dataclass
class FeatureOutcome:
    """What explaining one feature gave (an explain task's answer, written whole or not
    at all): its label text and scores, or the error that stopped it."""

    index: int
    text: str | None = None
    scores: list[ScoreIn] = field(default_factory=list)
    unscored: dict[str, str] = field(default_factory=dict)  # score type -> why
    error: str | None = None
    explained_from: list[dict] = field(default_factory=list)  # the windows it saw


@dataclass
class ExplainPlan:
    spec: ExplainSpec
    sae_id: str
    checkpoint: str | None
    activation_set: str | None
    hook: str
    todo: list[int]  # feature indices to explain now
    feature_ids: dict[int, tuple[int, float, float]]  # index -> (row id, density, max)
    skipped_existing: int
    skipped_dead: int

    def load_evidence(self, s: Session, indices: list[int]) -> list[FeatureEvidence]:
        fids = [self.feature_ids[index][0] for index in indices]
        examples = queries.feature_examples_many(s, fids)  # one query each for the batch
        projections = queries.feature_projection_many(s, fids)
        out = []
        for index in indices:
            fid, density, max_act = self.feature_ids[index]
            explain, held = split_examples(examples[fid], self.spec.n_explain)
            promoted = [p.token_str for p in projections[fid]["top"]]
            out.append(
                FeatureEvidence(index, fid, density, max_act, explain, held, promoted[:N_PROMOTED])
            )
        return out

    def build_pool(self, settings: Settings) -> ScoringPool:
        """Run the subject model and the SAE over the scoring contexts (once per job)."""
        from saefeat.interp.encoder import sentence_encoder
        from saefeat.lm import auto_dtype, cached_model
        from saefeat.sae import load_sae
        from saefeat.storage.activations import open_set

        if not self.checkpoint or not self.activation_set:
            raise SpecError(
                f"SAE {self.sae_id!r} has no checkpoint or activation set on record; the "
                "scorers need both to run the model and the SAE",
                field="sae",
            )
        try:
            aset = open_set(settings.activations_dir, self.activation_set)
        except Exception as e:
            raise SpecError(
                f"the activation set {self.activation_set} of SAE {self.sae_id!r} cannot be "
                f"opened under {settings.activations_dir}: {e}",
                field="sae",
            ) from e
        contexts = scoring_contexts(aset, self.spec.pool_contexts, self.spec.seed)
        # The harvest's dtype choice: bf16 where the CPU runs it fast (~10x fp32 here).
        return build_pool(
            cached_model(aset.model_name, aset.revision, "cpu", auto_dtype("cpu")),
            load_sae(self.checkpoint),
            self.hook,
            aset.tokens(),
            contexts,
            sentence_encoder(),
        )


def check_sae(session: Session, spec: ExplainSpec) -> SAE:
    """The spec's SAE, if it exists (NotFoundError), is indexed and has the features asked
    for (SpecError naming `sae` / `features`)."""
    sae = queries.get_sae(session, spec.sae)
    if queries.count_features(session, spec.sae) == 0:
        raise SpecError(
            f"SAE {spec.sae!r} has not been indexed yet; run `saefeat index --sae "
            f"{spec.sae}` first",
            field="sae",
        )
    outside = [i for i in spec.features or [] if i >= sae.d_sae]
    if outside:
        raise SpecError(
            f"SAE {spec.sae!r} has features 0..{sae.d_sae - 1}; {outside[0]} is not one",
            field="features",
        )
    return sae


def prepare(spec: ExplainSpec, settings: Settings, explainer: Explainer) -> ExplainPlan:
    """Check the SAE is indexed and pick the features to do (SpecError / NotFoundError)."""
    from saefeat.storage.catalog.db import catalog_session

    with catalog_session(settings) as s:
        sae = check_sae(s, spec)
        wanted = spec.features if spec.features is not None else list(range(sae.d_sae))
        rows = s.execute(
            select(Feature.index, Feature.id, Feature.density, Feature.max_activation).where(
                Feature.sae_id == spec.sae
            )
        ).all()
        feature_ids = {int(i): (int(fid), float(d), float(m)) for i, fid, d, m in rows}
        done = explained_indices(s, spec.sae, explainer.name, explainer.prompt_version)
        plan = ExplainPlan(
            spec=spec,
            sae_id=spec.sae,
            checkpoint=sae.checkpoint_path,
            activation_set=sae.activation_set_id,
            hook=sae.hook_name,
            todo=[],
            feature_ids=feature_ids,
            skipped_existing=0,
            skipped_dead=0,
        )
    for i in wanted:
        if i in done:
            plan.skipped_existing += 1
        elif feature_ids[i][2] <= 0:  # never fired: no examples to explain it from
            plan.skipped_dead += 1
        else:
            plan.todo.append(i)
    return plan


def write_outcomes(
    s: Session, plan: ExplainPlan, explainer: Explainer, outcomes: list[FeatureOutcome]
) -> int:
    """Store each successful feature (label + explanation + scores) in one transaction per
    batch; failed features store nothing. Returns how many were written."""
    written = 0
    for o in outcomes:
        if o.error or o.text is None:
            continue
        write_explanation(
            s,
            plan.feature_ids[o.index][0],
            text=o.text,
            explainer=explainer.name,
            explainer_model=explainer.model,
            prompt_version=explainer.prompt_version,
            evidence={"explained_from": o.explained_from, "unscored": o.unscored},
            scores=o.scores,
        )
        written += 1
    s.commit()
    return written
