"""A paired harvest (model diffing): one job fills a set per model on identical tokens.

Two tiny Llamas share a tokenizer and differ in weights; a third folder holds the same
model with a tokenizer that has one token more, a fourth one whose BOS is another token.
Each side's set is the one a plain harvest of its model makes (and reuses); a cancel
between the sides keeps the first; a pair whose tokenizers differ is refused over HTTP
and on the command line naming `paired_model`, with no job row."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from saefeat.admission import Admission, admit_harvest
from saefeat.api.app import create_app
from saefeat.errors import SpecError
from saefeat.pairing import check_same_tokens, tokenizer_differences
from saefeat.specs import HarvestSpec
from saefeat.storage.activations import STATUS_COMPLETE, open_set
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.keys import create_api_key
from saefeat.storage.catalog.models import Job
from saefeat.workers.harvest import HarvestCancelled
from saefeat.workers.harvest_job import harvested, run_harvest_job
from saefeat.workers.runtime import work_here

HOOK = "blocks.1.hook_resid_post"
TOKENS, CTX = 256, 16


def _copy_with_tokenizer(tiny_llama, path, change):
    """The tiny Llama's folder with its tokenizer changed by `change(tokenizer)`."""
    from transformers import AutoTokenizer

    shutil.copytree(tiny_llama, path, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    change(tokenizer)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def more_tokens(tiny_llama, tmp_path_factory):
    """The tiny Llama whose tokenizer has a token more."""
    return _copy_with_tokenizer(tiny_llama, tmp_path_factory.mktemp("more-tokens"),
                                lambda t: t.add_tokens(["<|diff|>"]))  # fmt: skip


@pytest.fixture(scope="module")
def other_bos(tiny_llama, tmp_path_factory):
    """The tiny Llama whose tokenizer's BOS is its EOS token (same vocabulary)."""

    def change(tokenizer):
        tokenizer.bos_token = tokenizer.eos_token

    return _copy_with_tokenizer(tiny_llama, tmp_path_factory.mktemp("other-bos"), change)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("def add(a, b):\n    return a + b\n" * 200)
    return path


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if anything starts (or joins) Ray: one worker runs here."""

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for work this process can do")

    for module in ("runtime", "harvest"):
        monkeypatch.setattr(f"saefeat.workers.{module}.ensure_ray", refuse)


def _spec(model, corpus, **more) -> HarvestSpec:
    """What `saefeat harvest` below asks for."""
    return HarvestSpec(model=str(model), hooks=[HOOK], corpus=[str(corpus)], token_budget=TOKENS,
                       ctx_len=CTX, contexts_per_shard=4, model_dtype="float32",
                       storage_dtype="float32", **more)  # fmt: skip


def _cli(*args) -> tuple[int, str]:
    from saefeat.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output.strip()


def _cli_harvest(model, corpus, *more) -> tuple[int, str]:
    return _cli("harvest", "--model", str(model), "--hook", HOOK, "--corpus", str(corpus),
                "--tokens", str(TOKENS), "--ctx-len", str(CTX), "--shard-contexts", "4",
                "--model-dtype", "float32", "--storage-dtype", "float32", *more)  # fmt: skip


def _job_rows(settings) -> int:
    with catalog_session(settings) as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_one_job_fills_both_sets_on_identical_tokens(settings, tiny_llama, tiny_llama_b,
                                                      corpus, no_ray):  # fmt: skip
    code, out = _cli_harvest(tiny_llama, corpus, "--paired-model", str(tiny_llama_b))
    assert code == 0, out
    ids = out.splitlines()[-2:]
    paired = _spec(tiny_llama, corpus, paired_model=str(tiny_llama_b))
    # Each side's set is the one a plain harvest of its model makes.
    plain_a, plain_b = _spec(tiny_llama, corpus), _spec(tiny_llama_b, corpus)
    assert ids == paired.set_ids() == [plain_a.set_id(), plain_b.set_id()]
    a, b = (open_set(settings.activations_dir, i) for i in ids)
    assert a.status == b.status == STATUS_COMPLETE and a.n_tokens == TOKENS
    assert (a.model_name, b.model_name) == (str(tiny_llama), str(tiny_llama_b))
    assert b.spec["model"] == str(tiny_llama_b) and b.spec.get("paired_model") is None
    assert np.array_equal(a.tokens(), b.tokens())
    acts_a, acts_b = a.acts_array(HOOK)[:], b.acts_array(HOOK)[:]
    assert acts_a.shape == acts_b.shape and not np.allclose(acts_a, acts_b)
    assert harvested(settings, paired)

    with catalog_session(settings) as s:  # one job, its progress over both sides
        (job,) = s.scalars(select(Job)).all()
    assert job.status == "succeeded" and job.progress_done == job.progress_total == 2 * TOKENS
    assert ids[0] in job.error and ids[1] in job.error  # the note names both sets
    app = create_app(settings)
    with app.state.sessionmaker() as s:
        key = create_api_key(s, "admin", ["admin"])
        s.commit()
    with TestClient(app) as client:
        shown = client.get(f"/v1/jobs/{job.id}", headers={"Authorization": f"Bearer {key}"})
    assert shown.json()["activation_sets"] == ids and shown.json()["activation_set"] == ids[0]

    # A plain harvest of the paired model reuses its set.
    code, out = _cli_harvest(tiny_llama_b, corpus)
    assert code == 0 and "reused" in out and out.splitlines()[-1] == ids[1], out


def test_cancel_between_sides_then_resume(settings, tiny_llama, tiny_llama_b, corpus, no_ray):
    spec = _spec(tiny_llama, corpus, paired_model=str(tiny_llama_b))
    first, second = spec.set_ids()

    def first_done() -> bool:  # the first side is complete: stop before the second
        try:
            return open_set(settings.activations_dir, first).status == STATUS_COMPLETE
        except Exception:
            return False

    seen: list[tuple[int, int]] = []
    with work_here(), pytest.raises(HarvestCancelled):
        run_harvest_job(spec, settings=settings, progress=lambda d, t, *_: seen.append((d, t)),
                        should_stop=first_done)  # fmt: skip
    assert seen[-1] == (TOKENS, 2 * TOKENS)  # the first side of two
    assert not (settings.activations_dir / f"{second}.zarr").exists()
    assert not harvested(settings, spec)

    seen.clear()
    with work_here():
        outcome = run_harvest_job(spec, settings=settings,
                                  progress=lambda d, t, *_: seen.append((d, t)),
                                  should_stop=lambda: False)  # fmt: skip
    assert outcome.status == "succeeded"
    assert [r.activation_set.id for r in outcome.result.sides()] == [first, second]
    assert [r.reused for r in outcome.result.sides()] == [True, False]
    assert seen[0] == (TOKENS, 2 * TOKENS) and seen[-1] == (2 * TOKENS, 2 * TOKENS)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert harvested(settings, spec)


def test_other_tokens_fail_the_job_naming_paired_model(settings, tiny_llama, other_bos, corpus,
                                                       no_ray, monkeypatch):  # fmt: skip
    """The tokens check after both sides, for a pair the tokenizer check let through."""
    monkeypatch.setattr("saefeat.workers.harvest_job.check_pairing", lambda spec: None)
    spec = _spec(tiny_llama, corpus, paired_model=str(other_bos))
    with work_here(), pytest.raises(SpecError, match="other tokens") as err:
        run_harvest_job(spec, settings=settings, progress=None, should_stop=lambda: False)
    assert err.value.field == "paired_model" and "context 0" in err.value.message


def test_tokenizers_that_differ_are_named(tiny_llama, more_tokens, other_bos):
    from transformers import AutoTokenizer

    mine = AutoTokenizer.from_pretrained(tiny_llama)
    assert tokenizer_differences(mine, AutoTokenizer.from_pretrained(tiny_llama)) == []
    (vocab,) = tokenizer_differences(mine, AutoTokenizer.from_pretrained(more_tokens))
    assert "512 vs 513" in vocab and "'<|diff|>'" in vocab and "only in the paired" in vocab
    assert tokenizer_differences(mine, AutoTokenizer.from_pretrained(other_bos)) == [
        f"bos_token_id {mine.bos_token_id} vs {mine.eos_token_id}"
    ]


def test_token_arrays_are_compared_a_slice_at_a_time():
    tokens = np.arange(40).reshape(10, 4)

    def aset(name, t):
        return SimpleNamespace(id=name, n_contexts=len(t), ctx_len=t.shape[1],
                               tokens=lambda c0=0, c1=None: t[c0:c1])  # fmt: skip

    spec = HarvestSpec(model="/a", paired_model="/b", hooks=[HOOK])
    check_same_tokens(spec, aset("as-a", tokens), aset("as-b", tokens.copy()), contexts=3)
    other = tokens.copy()
    other[7, 2] = -1
    with pytest.raises(SpecError, match="context 7 differs first") as err:
        check_same_tokens(spec, aset("as-a", tokens), aset("as-b", other), contexts=3)
    assert err.value.field == "paired_model" and "'/b'" in err.value.message
    with pytest.raises(SpecError, match="10x4 vs 9x4"):
        check_same_tokens(spec, aset("as-a", tokens), aset("as-b", tokens[:9]))


@pytest.fixture
def api(settings, tiny_llama, more_tokens):
    served = settings.model_copy(update={"allowed_models": [str(tiny_llama), str(more_tokens)]})
    app = create_app(served)
    with app.state.sessionmaker() as s:
        key = create_api_key(s, "admin", ["admin"])
        s.commit()
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


def _refused(client, settings, body: dict) -> dict:
    r = client.post("/v1/harvests", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in r.json()["errors"]] == ["paired_model"], r.json()
    assert _job_rows(settings) == 0
    return r.json()


def test_a_pair_that_cannot_share_tokens_is_refused(api, settings, tiny_llama, tiny_llama_b,
                                                    more_tokens, corpus):  # fmt: skip
    body = _spec(tiny_llama, corpus).model_dump(mode="json")
    other = _refused(api, settings, body | {"paired_model": str(more_tokens)})
    assert str(tiny_llama) in other["detail"] and str(more_tokens) in other["detail"]
    assert "vocabularies differ" in other["detail"]
    twice = _refused(api, settings, body | {"paired_model": str(tiny_llama)})
    assert "the same model twice" in twice["detail"]
    # A model the server does not offer is refused before its tokenizer is read.
    offered = _refused(api, settings, body | {"paired_model": str(tiny_llama_b)})
    assert "not one this server offers" in offered["detail"]

    # A pair that shares the tokenizer passes the same check (its job would run here).
    offering = settings.model_copy(update={"allowed_models": [str(tiny_llama),
                                                              str(tiny_llama_b)]})  # fmt: skip
    admit_harvest(_spec(tiny_llama, corpus, paired_model=str(tiny_llama_b)), Admission(offering))

    for paired in (more_tokens, tiny_llama):  # one line naming the field, no job row
        code, out = _cli_harvest(tiny_llama, corpus, "--paired-model", str(paired))
        assert code == 2 and out.startswith("error: paired_model: "), out
        assert len(out.splitlines()) == 1 and "Traceback" not in out
    assert _job_rows(settings) == 0
    assert not list(settings.activations_dir.glob("*.zarr"))
