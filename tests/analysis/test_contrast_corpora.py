"""Contrasts of corpora given as text sources (issue 22): every side is checked before
anything is harvested (a one-document plain-text file is refused at once, naming its
field), plain text is split into documents at blank lines, and `saefeat contrast` takes
two corpora to a contrast in one command, as the HTTP job does."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from saefeat.analysis.contrast import check_inputs
from saefeat.analysis.contrast_corpora import check_before_harvest, check_packed_documents
from saefeat.corpus import builtin_python_docs
from saefeat.errors import SpecError
from saefeat.specs import ContrastSpec
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.models import Job

HOOK = "blocks.2.hook_resid_post"
BUDGET = 128 * 8  # eight contexts a side at the harvest's default ctx_len (no training set)


@pytest.fixture
def sae_id(settings, tiny_llama) -> str:
    """A random TopK SAE on the tiny Llama, in the catalog (as an imported one would be:
    no training set, so a side's harvest takes the harvest defaults)."""
    import torch

    from saefeat.sae import SAEConfig
    from saefeat.sae.topk import TopKSAE
    from saefeat.storage.catalog.registry import register_sae

    torch.manual_seed(0)
    cfg = SAEConfig(d_in=64, d_sae=128, k=8, model=str(tiny_llama), hook=HOOK)
    TopKSAE(cfg).save(settings.saes_dir / "sae-t")
    with catalog_session(settings) as s:
        register_sae(s, sae_id="sae-t", name="t", model_name=str(tiny_llama), hook_name=HOOK,
                     architecture="topk", d_in=64, d_sae=128, k=8)  # fmt: skip
        s.commit()
    return "sae-t"


@pytest.fixture
def corpora(tmp_path) -> dict[str, str]:
    """Plain-text files (tmp_path is the settings' corpus root): prose and code with
    paragraphs between blank lines, and one paragraph with no blank line in it."""
    folder = tmp_path / "corpora"
    folder.mkdir()
    docs = [d.text for _, d in zip(range(12), builtin_python_docs(), strict=False)]
    body = "def f{i}(x, y):\n    total = x * {i} + y\n    for k in range(y):\n        total += k\n"
    code = [body.format(i=i) + f"    return total - {i * i}\n" for i in range(60)]
    files = {
        "prose": "\n\n".join(docs),
        "code": "\n\n".join(code),
        "one": " ".join(d.replace("\n", " ") for d in docs),
    }
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text)
    return {name: str(folder / f"{name}.txt") for name in files}


def _nothing_harvested(settings) -> bool:
    sets = (
        list(settings.activations_dir.glob("*.zarr")) if settings.activations_dir.exists() else []
    )
    with catalog_session(settings) as s:
        return not sets and s.scalar(select(func.count()).select_from(Job)) == 0


@pytest.fixture
def no_harvest(monkeypatch):
    """Any harvest that starts fails the test (the checks must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a harvest started before the contrast's checks refused it")

    monkeypatch.setattr("saefeat.workers.harvest_job.harvest", refuse)
    monkeypatch.setattr("saefeat.workers.harvest.prepare_set", refuse)


def test_a_one_document_side_is_refused_before_any_harvest(
    settings, sae_id, corpora, tmp_path, no_harvest
):
    from saefeat.api.app import create_app
    from saefeat.cli import app as cli
    from saefeat.storage.catalog.keys import create_api_key
    from saefeat.workers.contrast import run_contrast

    spec = ContrastSpec(sae=sae_id, a_corpus=corpora["one"], b_corpus=corpora["code"])
    with pytest.raises(SpecError, match="holds one document") as err:
        run_contrast(spec, settings=settings)
    assert err.value.field == "a_corpus"

    app = create_app(settings)
    with app.state.sessionmaker() as s:
        key = create_api_key(s, "jobs", ["jobs"])
        s.commit()
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(app) as client:
        body = {
            "sae": sae_id,
            "a": None,
            "b_corpus": [corpora["one"]],
            "a_corpus": corpora["prose"],
        }
        r = client.post("/v1/contrasts", json=body, headers=auth)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"][0]["field"] == "b_corpus"
        assert "one document" in r.json()["detail"] and "blank lines" in r.json()["detail"]
        outside = tmp_path.parent / "elsewhere.txt"
        r = client.post("/v1/contrasts", headers=auth,
                        json={**body, "b_corpus": [str(outside)]})  # fmt: skip
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "b_corpus.0.path"

    result = CliRunner().invoke(cli, ["contrast", "--sae", sae_id, "--a-corpus", corpora["prose"],
                                      "--b-corpus", corpora["one"]])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "b_corpus:" in result.output and "one document" in result.output
    assert _nothing_harvested(settings)


def test_blank_lines_make_documents_and_contexts_must_start_in_two(
    settings, sae_id, corpora, tmp_path, no_harvest
):
    spec = ContrastSpec(sae=sae_id, a_corpus=corpora["prose"], b_corpus=corpora["code"],
                        token_budget=BUDGET)  # fmt: skip
    with catalog_session(settings) as s:
        inputs = check_inputs(spec, settings, s)  # the cheap count passes
    assert inputs.a is None and inputs.b is None
    harvests = check_before_harvest(spec, inputs.cfg, settings)
    assert set(harvests) == {"a", "b"}
    for side, harvest in harvests.items():
        assert harvest.model == inputs.cfg.model and harvest.ctx_len == 128
        assert harvest.hooks == [HOOK] and harvest.text_documents == "paragraphs"
        assert harvest.corpus == getattr(spec, f"{side}_corpus")
        assert check_packed_documents(harvest, settings, f"{side}_corpus") >= 2

    # Two paragraphs, but every context starts in the first: one document as counted.
    long = open(corpora["one"]).read()[:3000]
    (tmp_path / "two.txt").write_text(f"{long}\n\na short one\n")
    two = ContrastSpec(sae=sae_id, a_corpus=corpora["prose"], b_corpus=str(tmp_path / "two.txt"),
                       token_budget=BUDGET)  # fmt: skip
    with catalog_session(settings) as s:
        check_inputs(two, settings, s)  # two documents: the cheap count passes
    with pytest.raises(SpecError, match="a context") as err:
        check_before_harvest(two, inputs.cfg, settings)
    assert err.value.field == "b_corpus"
    assert _nothing_harvested(settings)


def test_cli_harvests_two_corpora_then_contrasts_and_the_job_does_too(
    settings, ray_session, sae_id, corpora
):
    from saefeat.api.app import create_app
    from saefeat.cli import app as cli
    from saefeat.storage.activations import STATUS_COMPLETE, open_set
    from saefeat.storage.catalog.contrasts import ContrastRun
    from saefeat.storage.catalog.keys import create_api_key

    args = ["contrast", "--sae", sae_id, "--a-corpus", corpora["prose"], "--b-corpus",
            corpora["code"], "--tokens", str(BUDGET), "--top", "3"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "fires more in A" in result.output and "AUROC" in result.output
    spec = ContrastSpec(sae=sae_id, a_corpus=corpora["prose"], b_corpus=corpora["code"],
                        token_budget=BUDGET)  # fmt: skip
    with catalog_session(settings) as s:
        run = s.get(ContrastRun, spec.contrast_id())
        assert run is not None and run.n_docs_a >= 2 and run.n_docs_b >= 2
        assert run.spec["a_corpus"][0]["path"] == corpora["prose"]
        kinds = sorted(j.kind for j in s.scalars(select(Job)))
    assert kinds == ["contrast", "harvest", "harvest"]  # each corpus harvested as a job, then
    # the contrast: the CLI's runs are job rows like HTTP ones
    a = open_set(settings.activations_dir, run.set_a)
    assert a.status == STATUS_COMPLETE and a.spec["text_documents"] == "paragraphs"
    assert a.hooks == [HOOK] and a.group.attrs["doc_ids"][:2] == ["prose.txt:p1", "prose.txt:p2"]

    # Over HTTP the job harvests (here: reuses the sets) and contrasts.
    app = create_app(settings)
    with app.state.sessionmaker() as s:
        key = create_api_key(s, "jobs", ["jobs"])
        s.commit()
    body = {"sae": sae_id, "a_corpus": [corpora["prose"]], "b_corpus": corpora["code"],
            "token_budget": BUDGET}  # fmt: skip
    with TestClient(app) as client:
        r = client.post("/v1/contrasts", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 202, r.text
        assert r.json()["contrast_id"] == spec.contrast_id()
        app.state.job_runner.wait(r.json()["job_id"], timeout=300)
        out = client.get(r.json()["location"]).json()
        assert out["status"] == "succeeded", out
        assert out["spec"]["a"] == run.set_a and out["spec"]["b"] == run.set_b
        page = client.get(f"/contrasts/{spec.contrast_id()}").text
        assert "corpus" in page and "prose.txt" in page
