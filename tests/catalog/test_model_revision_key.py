"""The catalog's model row is keyed by (name, revision), the default revision included
(issue 28, item 4; migration 0011)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from saefeat.storage.activations import ActivationSet
from saefeat.storage.catalog.db import make_engine, make_sessionmaker, upgrade
from saefeat.storage.catalog.models import SAE, ActivationSetRow, LanguageModelRow
from saefeat.storage.catalog.registry import register_sae
from saefeat.storage.catalog.set_registry import record_activation_set, sae_model

HOOK = "blocks.0.hook_resid_post"


def _set(root: Path, set_id: str, revision: str | None) -> ActivationSet:
    """A small real set on disk whose spec names `revision`."""
    return ActivationSet.create(
        root / set_id,
        set_id=set_id,
        spec={"model": "org/tiny", "revision": revision, "hooks": [HOOK]},
        model="org/tiny",
        hooks=[HOOK],
        d_model=4,
        tokens=np.zeros((2, 3), dtype=np.int32),
        doc_index=np.zeros(2, dtype=np.int32),
        doc_offset=np.zeros(2, dtype=np.int32),
        doc_ids=["d"],
        contexts_per_shard=2,
        storage_dtype="float32",
        n_layers=1,
    )


def test_each_revision_of_a_name_is_its_own_model_row(session, tmp_path):
    sets = {rev: _set(tmp_path, f"set-{rev}", rev) for rev in (None, "v1", "v2")}
    for aset in sets.values():
        record_activation_set(session, aset)
    for aset in sets.values():  # recording again finds the same rows
        record_activation_set(session, aset)
    session.commit()
    rows = session.scalars(select(LanguageModelRow)).all()
    assert sorted((r.name, r.revision or "") for r in rows) == [
        ("org/tiny", ""), ("org/tiny", "v1"), ("org/tiny", "v2"),
    ]  # fmt: skip
    for rev, aset in sets.items():
        assert session.get(ActivationSetRow, aset.id).model.revision == rev
        register_sae(session, sae_id=f"sae-{rev}", name="s", model_name="org/tiny",
                     hook_name=HOOK, architecture="topk", d_in=4, d_sae=8, k=2,
                     activation_set_id=aset.id)  # fmt: skip
    session.commit()
    for rev in sets:
        assert sae_model(session, session.get_one(SAE, f"sae-{rev}")) == ("org/tiny", rev)
    orphan = register_sae(session, sae_id="orphan", name="s", model_name="org/tiny",
                          hook_name=HOOK, architecture="topk", d_in=4, d_sae=8, k=2)  # fmt: skip
    assert sae_model(session, orphan) == ("org/tiny", None)  # no set on record: the default


def test_the_default_revision_is_one_row_too(session):
    """UNIQUE (name, revision) alone lets (name, NULL) in twice; 0011's index does not."""
    session.add(LanguageModelRow(name="org/tiny", revision=None, d_model=4, n_layers=1))
    session.commit()
    session.add(LanguageModelRow(name="org/tiny", revision=None, d_model=4, n_layers=1))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    session.add(LanguageModelRow(name="org/tiny", revision="main", d_model=4, n_layers=1))
    session.commit()


@pytest.mark.parametrize("which", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_0011_merges_duplicate_default_rows(which, request):
    url = request.getfixturevalue("sqlite_url" if which == "sqlite" else "postgres_url")
    upgrade(url, "0010")
    engine = make_engine(url)
    with engine.begin() as c:
        for i, rev in enumerate([None, None, "v2", None]):
            c.exec_driver_sql(
                "INSERT INTO language_models (id, name, revision, d_model, n_layers, created_at)"
                f" VALUES ({i + 1}, 'org/tiny', {'NULL' if rev is None else repr(rev)}, 4, 1,"
                " CURRENT_TIMESTAMP)"
            )
            c.exec_driver_sql(
                "INSERT INTO activation_sets (id, model_id, hook_names, ctx_len, n_contexts,"
                f" n_tokens, dtype, path, status, created_at) VALUES ('s{i}', {i + 1}, '[]',"
                " 3, 0, 0, 'float32', 'p', 'complete', CURRENT_TIMESTAMP)"
            )
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        rows = {r.id: r.revision for r in s.scalars(select(LanguageModelRow))}
        assert rows == {1: None, 3: "v2"}
        links = {r.id: r.model_id for r in s.scalars(select(ActivationSetRow))}
        assert links == {"s0": 1, "s1": 1, "s2": 3, "s3": 1}
    engine.dispose()
