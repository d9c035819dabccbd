"""Specs: every field is sorted into what names the work and what only says how to run
it; ids made before the one content-id rule are still the same ids."""

from __future__ import annotations

import hashlib
import json

import pytest

from saefeat.specs import (
    ContrastSpec,
    ExplainSpec,
    HarvestSpec,
    IndexSpec,
    PipelineSpec,
    TrainJobSpec,
    TrainSpec,
)
from saefeat.specs.base import Spec
from saefeat.workers.job_kinds import BUILTIN_KIND_MODULES, job_kinds

HOOK = "blocks.1.hook_resid_post"


def _spec_types() -> set[type[Spec]]:
    kinds = [k for k in job_kinds().values() if k.run.__module__ in BUILTIN_KIND_MODULES]
    return {k.spec_type for k in kinds} | {TrainSpec}


def test_every_builtin_kind_takes_a_spec():
    assert {ContrastSpec, ExplainSpec, HarvestSpec, IndexSpec, PipelineSpec,
            TrainJobSpec} <= _spec_types()  # fmt: skip
    assert all(issubclass(t, Spec) for t in _spec_types())


@pytest.mark.parametrize("spec_type", sorted(_spec_types(), key=lambda t: t.__name__))
def test_every_field_names_the_work_or_how_to_run_it(spec_type):
    """A new field must be put in one list: then it can neither silently reuse a stale
    result (a field that changes the work, left out of the id) nor silently change every
    id (a field that only says how to run it, hashed)."""
    lists = [spec_type.ID_FIELDS, spec_type.ID_FIELDS_IF_SET, spec_type.RUN_FIELDS]
    listed = [name for names in lists for name in names]
    assert sorted(listed) == sorted(set(listed)), f"{spec_type.__name__}: a field in two lists"
    assert set(listed) == set(spec_type.model_fields), (
        f"{spec_type.__name__}: unsorted {set(spec_type.model_fields) - set(listed)}, "
        f"unknown {set(listed) - set(spec_type.model_fields)}"
    )


@pytest.mark.parametrize("spec_type", sorted(_spec_types(), key=lambda t: t.__name__))
def test_every_field_is_described(spec_type):
    """The description feeds both the CLI's help and the OpenAPI schema."""
    missing = [n for n, f in spec_type.model_fields.items() if not f.description]
    assert not missing, f"{spec_type.__name__}: {missing}"


# The recipes the ids were made with before the one rule, written out as they were.
def _legacy_hash(prefix: str, data: dict, digits: int = 16) -> str:
    blob = json.dumps(data, sort_keys=True).encode()
    return f"{prefix}-{hashlib.sha256(blob).hexdigest()[:digits]}"


HARVEST_DATA = ("model", "revision", "model_dtype", "hooks", "corpus", "ctx_len", "bos",
                "token_budget", "contexts_per_shard", "storage_dtype", "on_bad_document",
                "on_nonfinite")  # fmt: skip


def test_harvest_set_ids_stay():
    corpus = ["a.txt", {"path": "b.jsonl", "weight": 2}]
    other = HarvestSpec(hooks=[HOOK], model="/m", revision="v2", ctx_len=16, corpus=corpus)
    for spec in [HarvestSpec(hooks=[HOOK]), other]:
        legacy = _legacy_hash("as", spec.model_dump(include=set(HARVEST_DATA), mode="json"))
        assert spec.set_id() == legacy
    # run knobs stay out of the id; a data field changes it
    one = HarvestSpec(hooks=[HOOK])
    assert one.set_id() == HarvestSpec(hooks=[HOOK], batch_size=64, device="cpu").set_id()
    assert one.set_id() != HarvestSpec(hooks=[HOOK], ctx_len=64).set_id()


def test_paired_harvest_sides_are_plain_harvests():
    """Each side of a paired harvest fills the set a plain harvest of its model fills (an
    existing one is reused); the pairing names other work (its job hash) but no set."""
    common = {"hooks": [HOOK], "ctx_len": 16, "corpus": ["a.txt"]}
    a, b = HarvestSpec(model="/a", **common), HarvestSpec(model="/b", revision="v2", **common)
    paired = HarvestSpec(model="/a", paired_model="/b", paired_revision="v2", **common)
    assert paired.set_ids() == [a.set_id(), b.set_id()]
    assert paired.set_id() == a.set_id() == a.content_id()
    assert [side.paired_model for side in paired.sides()] == [None, None]
    assert paired.sides()[1].model_dump(exclude={"model", "revision"}) == (
        a.model_dump(exclude={"model", "revision"})
    )
    assert paired.content_id() not in (a.set_id(), b.set_id())
    assert paired.content_id() != HarvestSpec(model="/a", paired_model="/b", **common).content_id()
    assert a.sides() == [a] and a.set_ids() == [a.set_id()]
    with pytest.raises(ValueError, match="paired_model"):
        HarvestSpec(paired_revision="v2", **common)


def _legacy_sae_id(spec: TrainSpec) -> str:
    run = {"device", "name", "checkpoint_every_tokens", "eval_ce_contexts", "resume_from"}
    data = spec.model_dump(mode="json", exclude=run)
    if data["optimizer_state"] == "fp32":
        del data["optimizer_state"]
    assert data.pop("hook_out") is None and data.pop("skip_connection") is False  # joined later
    assert data.pop("sources") is None
    return _legacy_hash("sae", {"set": spec.activation_set, **data}, 12)


def test_sae_ids_stay():
    for spec in [
        TrainSpec(activation_set="as-1"),
        TrainSpec(activation_set="as-1", architecture="jumprelu", d_sae=64),
        TrainSpec(activation_set="as-1", optimizer_state="bf16", device="cpu", k=8),
    ]:
        assert spec.sae_id() == _legacy_sae_id(spec)
    base = TrainSpec(activation_set="as-1")
    assert base.sae_id() == TrainSpec(activation_set="as-1", name="x", device="cpu").sae_id()
    assert base.sae_id() != TrainSpec(activation_set="as-1", optimizer_state="bf16").sae_id()
    pair = {"hook": "blocks.1.ln2.hook_normalized", "hook_out": "blocks.1.hook_mlp_out"}
    transcoder = TrainSpec(activation_set="as-1", **pair)
    assert transcoder.sae_id() != TrainSpec(activation_set="as-1", hook=pair["hook"]).sae_id()
    assert transcoder.sae_id() != TrainSpec(activation_set="as-1", skip_connection=True,
                                            **pair).sae_id()  # fmt: skip
    job = TrainJobSpec(specs=[base])
    legacy = "train-" + hashlib.sha256(base.sae_id().encode()).hexdigest()[:16]
    assert job.content_id() == legacy


def test_index_and_contrast_ids_stay():
    index = IndexSpec(sae="sae-1", n_examples=5, batch_contexts=8, device="cpu")
    # Fields that joined later (ID_FIELDS_IF_SET, at their defaults): ids made before stay.
    later = {"device", "batch_contexts", *IndexSpec.ID_FIELDS_IF_SET}
    data = index.model_dump(mode="json", exclude=later)
    assert index.content_id() == _legacy_hash("index", data)
    assert IndexSpec(sae="sae-1", n_examples=5, n_effect_contexts=0).content_id() != (
        index.content_id()
    )
    contrast = ContrastSpec(sae="sae-1", a="as-a", b="as-b", top=5, alpha=0.1)
    fields = {"sae", "a", "b", "window", "alpha", "classifier_features", "test_fraction", "seed"}
    assert contrast.contrast_id() == _legacy_hash("ct", contrast.model_dump(include=fields))


def test_explain_ids_leave_out_how_to_run():
    one = ExplainSpec(sae="sae-1", features=[3, 1])
    assert one.content_id() == ExplainSpec(sae="sae-1", features=[1, 3],
                                           batch_features=8).content_id()  # fmt: skip
    assert one.content_id() != ExplainSpec(sae="sae-1", features=[1]).content_id()


def test_migration_0012_rehashes_explain_jobs(tmp_path):
    """An explain job row written before the rule gets the rule's hash (a resubmit after
    the upgrade joins it), and its old hash back on a downgrade."""
    from sqlalchemy import text

    from saefeat.storage.catalog.db import downgrade, make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url, "0011")
    spec = ExplainSpec(sae="sae-1", features=[1, 2], scorers=["embedding"])
    legacy = "ex-" + hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    engine = make_engine(url)
    insert = ("INSERT INTO jobs (id, kind, spec, spec_hash, status, progress_done, created_at,"
              " updated_at) VALUES (:id, :kind, :spec, :hash, 'queued', 0, CURRENT_TIMESTAMP,"
              " CURRENT_TIMESTAMP)")  # fmt: skip
    with engine.begin() as c:
        c.execute(text(insert), {"id": "e", "kind": "explain", "hash": legacy,
                                 "spec": json.dumps(spec.model_dump(mode="json"))})  # fmt: skip
        c.execute(text(insert), {"id": "h", "kind": "harvest", "hash": "as-x", "spec": "{}"})

    def hashes() -> dict:
        with engine.connect() as c:
            return dict(c.execute(text("SELECT id, spec_hash FROM jobs")).all())

    upgrade(url)
    assert hashes() == {"e": spec.content_id(), "h": "as-x"}
    downgrade(url, "0011")
    assert hashes() == {"e": legacy, "h": "as-x"}
    engine.dispose()
