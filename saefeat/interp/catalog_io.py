"""The explain job's reads and writes: which features to do, their evidence from the
catalog, the scoring pool from the SAE's activation set, and the finished features back.

A crosscoder (several models or layers at once) has no Patchscope explanation: that
decodes a direction in one model at one hook. Its features are done by the other
explainers, patchscope skipped; a spec asking for patchscope alone is refused naming
`explainer`. Its scoring pool encodes its sources' stored activations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.config import Settings
from saefeat.errors import SpecError
from saefeat.features.crosscoder import crosscoder_sources, refuse_crosscoder
from saefeat.interp.evidence import FeatureEvidence, split_examples
from saefeat.interp.pool import ScoringPool, build_pool, scoring_contexts
from saefeat.specs import ExplainSpec
from saefeat.storage.catalog import feature_reads, queries
from saefeat.storage.catalog.explanations import ScoreIn, explained_indices, write_explanation
from saefeat.storage.catalog.models import (
    SAE,
    ActivationSetRow,
    Feature,
    LanguageModelRow,
    TokenEffect,
)

if TYPE_CHECKING:
    from saefeat.interp.explainers import Explainer
    from saefeat.interp.patchscope import Subject

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
    explainer: str = "offline"  # which explainer made `text` (one outcome per explainer)
    explainer_model: str | None = None
    prompt_version: str = ""
    promoted_source: str | None = None  # where "makes ... more likely" came from


@dataclass
class ExplainPlan:
    spec: ExplainSpec
    sae_id: str
    checkpoint: str | None
    activation_set: str | None
    hook: str  # the hook the SAE reads (the scoring pool encodes it)
    todo: list[int]  # feature indices to explain now
    feature_ids: dict[int, tuple[int, float, float]]  # index -> (row id, density, max)
    skipped_existing: int
    skipped_dead: int
    # index -> the explainers still to run on it (a feature in `todo` lacks at least one)
    missing: dict[int, list[str]] = field(default_factory=dict)
    model: tuple[str, str | None] | None = None  # the set's model (name, revision)
    hook_out: str | None = None  # a transcoder's output hook, where its decoder writes
    sources: list[dict] = field(default_factory=list)  # a crosscoder's (else empty)

    def load_evidence(self, s: Session, indices: list[int]) -> list[FeatureEvidence]:
        fids = [self.feature_ids[index][0] for index in indices]
        examples = feature_reads.feature_examples_many(s, fids)  # one query each for the batch
        projections = feature_reads.feature_projection_many(s, fids)
        effects = promoted_effects(s, fids)
        out = []
        for index in indices:
            fid, density, max_act = self.feature_ids[index]
            explain, held = split_examples(examples[fid], self.spec.n_explain)
            source, promoted = effects.get(fid) or (
                "projection",
                [p.token_str for p in projections[fid]["top"]],
            )
            out.append(FeatureEvidence(index, fid, density, max_act, explain, held,
                                       promoted[:N_PROMOTED], source))  # fmt: skip
        return out

    def subject(self) -> Subject | None:
        """What the patchscope explainer runs (None without a checkpoint or a model): the
        decoder rows are added where they are written (a transcoder's output hook)."""
        from saefeat.interp.patchscope import Subject

        if not self.checkpoint or self.model is None or self.sources:
            return None
        live = sorted(m for _, _, m in self.feature_ids.values() if m > 0)
        typical = live[len(live) // 2] if live else 1.0
        hook = self.hook_out or self.hook
        return Subject(self.model[0], self.model[1], self.checkpoint, hook, typical)

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
        sae, inputs = load_sae(self.checkpoint), None
        if self.sources:  # its sources' stored activations; the model names the tokens
            from saefeat.features.crosscoder import open_source_sets

            sets = open_source_sets(sae.cfg, settings.activations_dir, aset)
            aset, inputs = sets.main, sets.read_contexts
        contexts = scoring_contexts(aset, self.spec.pool_contexts, self.spec.seed)
        # The harvest's dtype choice: bf16 where the CPU runs it fast (~10x fp32 here).
        return build_pool(
            cached_model(aset.model_name, aset.revision, "cpu", auto_dtype("cpu")),
            sae,
            self.hook,
            aset.tokens(),
            contexts,
            sentence_encoder(),
            inputs=inputs,
        )


def check_sae(session: Session, spec: ExplainSpec) -> SAE:
    """The spec's SAE, if it exists (NotFoundError), is indexed and has the features asked
    for (SpecError naming `sae` / `features`); a crosscoder asks for an explainer besides
    patchscope (naming `explainer`)."""
    sae = queries.get_sae(session, spec.sae)
    if spec.explainers == ["patchscope"]:
        refuse_crosscoder((sae.cfg or {}).get("sources"), "patchscope", "explainer")
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


def promoted_effects(s: Session, feature_ids: list[int], k: int = N_PROMOTED) -> dict:
    """Feature row id -> (method, the tokens it makes more likely, best first), from table
    token_effects, side `up`: the `measured` effect where indexing stored one, else the
    `debiased` projection; features with neither are absent (the caller falls back to the
    vocabulary projection)."""
    rows = s.execute(
        select(TokenEffect.feature_id, TokenEffect.method, TokenEffect.token_str)
        .where(TokenEffect.feature_id.in_(feature_ids), TokenEffect.side == "up",
               TokenEffect.rank < k)
        .order_by(TokenEffect.feature_id, TokenEffect.method, TokenEffect.rank)
    ).all()  # fmt: skip
    by: dict[int, dict[str, list[str]]] = {}
    for fid, method, token in rows:
        by.setdefault(fid, {}).setdefault(method, []).append(token)
    out = {}
    for fid, methods in by.items():
        method = next(m for m in ("measured", "debiased") if m in methods)
        out[fid] = (method, methods[method])
    return out


def prepare(
    spec: ExplainSpec, settings: Settings, explainer: Explainer | list[Explainer]
) -> ExplainPlan:
    """Check the SAE is indexed and pick the features to do (SpecError / NotFoundError):
    those that fire and lack an explanation by one of the explainers (its name and
    prompt version), each with the explainers it lacks."""
    from saefeat.storage.catalog.db import catalog_session

    explainers = explainer if isinstance(explainer, list) else [explainer]
    with catalog_session(settings) as s:
        sae = check_sae(s, spec)
        sources = crosscoder_sources((sae.cfg or {}).get("sources"))
        if sources:  # no Patchscope of a crosscoder (module docstring)
            explainers = [e for e in explainers if e.name != "patchscope"]
        wanted = spec.features if spec.features is not None else list(range(sae.d_sae))
        rows = s.execute(
            select(Feature.index, Feature.id, Feature.density, Feature.max_activation).where(
                Feature.sae_id == spec.sae
            )
        ).all()
        feature_ids = {int(i): (int(fid), float(d), float(m)) for i, fid, d, m in rows}
        done = {
            e.name: explained_indices(s, spec.sae, e.name, e.prompt_version) for e in explainers
        }
        model = s.execute(
            select(LanguageModelRow.name, LanguageModelRow.revision)
            .join(ActivationSetRow, ActivationSetRow.model_id == LanguageModelRow.id)
            .where(ActivationSetRow.id == sae.activation_set_id)
        ).first()  # fmt: skip
        plan = ExplainPlan(
            spec=spec,
            sae_id=spec.sae,
            checkpoint=sae.checkpoint_path,
            activation_set=sae.activation_set_id,
            hook=sae.hook_name,
            hook_out=sae.hook_out_name,
            todo=[],
            feature_ids=feature_ids,
            skipped_existing=0,
            skipped_dead=0,
            model=(model[0], model[1]) if model else (sae.model_name, None),
            sources=sources,
        )
    for i in wanted:
        lacking = [e.name for e in explainers if i not in done[e.name]]
        if not lacking:
            plan.skipped_existing += 1
        elif feature_ids[i][2] <= 0:  # never fired: no examples to explain it from
            plan.skipped_dead += 1
        else:
            plan.todo.append(i)
            plan.missing[i] = lacking
    return plan


def write_outcomes(s: Session, plan: ExplainPlan, outcomes: list[FeatureOutcome]) -> int:
    """Store each successful explanation (label + explanation + scores) in one transaction
    per batch; a failed one stores nothing. Returns how many were written."""
    written = 0
    for o in outcomes:
        if o.error or o.text is None:
            continue
        evidence: dict = {"explained_from": o.explained_from, "unscored": o.unscored}
        if o.promoted_source:
            evidence["promoted_from"] = o.promoted_source
        write_explanation(
            s,
            plan.feature_ids[o.index][0],
            text=o.text,
            explainer=o.explainer,
            explainer_model=o.explainer_model,
            prompt_version=o.prompt_version,
            evidence=evidence,
            scores=o.scores,
        )
        written += 1
    s.commit()
    return written
