"""The explain job end to end on a tiny random Llama: harvest -> train -> index ->
explain (offline and patchscope explainers, embedding + activation scorers, real Ray,
real sentence encoder) -> catalog, API and CLI; the best-scored explanation is the
label; resume and cancel; bad input; the own-vs-neighbour check runs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from saefeat.api.app import create_app
from saefeat.api.schemas import FeatureDetail
from saefeat.cli import app as cli_app
from saefeat.config import Settings, get_settings
from saefeat.interp.checks import own_vs_neighbour, scores_in_unit_interval
from saefeat.pipeline import run_harvest, run_index, run_train
from saefeat.specs import ExplainSpec, HarvestSpec, IndexSpec, TrainSpec
from saefeat.storage.catalog import queries
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.explanations import SCORE_TYPES, feature_explanations, headline_score
from saefeat.storage.catalog.keys import create_api_key
from saefeat.storage.catalog.labels import current_label
from saefeat.storage.catalog.registry import register_sae
from saefeat.workers.explain import run_explain

SCORERS = ["embedding", "activation", "keyword"]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_llama, ray_session):
    """(settings, sae id) of an indexed tiny SAE; SAEFEAT_HOME points at it (the CLI)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAEFEAT_HOME", str(tmp_path_factory.mktemp("explain-home")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        get_settings.cache_clear()
        settings = Settings()
        spec = HarvestSpec(
            model=str(tiny_llama), hooks=["blocks.2.hook_resid_post"], ctx_len=32,
            token_budget=32 * 48, contexts_per_shard=8, model_dtype="float32",
        )  # fmt: skip
        aset = run_harvest(spec, settings=settings).activation_set
        train = run_train(
            TrainSpec(activation_set=aset.id, d_sae=32, k=4, batch_size=64, epochs=2, lr=3e-3),
            settings=settings,
        )
        run_index(IndexSpec(sae=train.sae_id, n_examples=8, window=4), settings=settings)
        yield settings, train.sae_id
    get_settings.cache_clear()


def _spec(sae_id: str, features, **kw) -> ExplainSpec:
    return ExplainSpec(sae=sae_id, features=features, scorers=SCORERS, pool_contexts=24,
                       batch_features=4, n_explain=4, **kw)  # fmt: skip


def test_explain_writes_labels_with_scores_and_a_rerun_resumes(indexed):
    settings, sae_id = indexed
    seen = []
    result = run_explain(_spec(sae_id, list(range(10))), settings=settings,
                         progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert result.failed == {}
    assert result.explained + result.skipped_dead == 10 and result.explained > 0
    assert seen[-1][0] == seen[-1][1] == result.explained
    assert set(result.mean_scores) <= set(SCORERS)
    with catalog_session(settings) as s:
        explained = 0
        for i in range(10):
            f = queries.get_feature(s, sae_id, i)
            rows = feature_explanations(s, f.id)
            if not rows:
                assert f.max_activation <= 0  # only dead features are left out
                continue
            explained += 1
            # One explanation per explainer, every one scored by the same scorers.
            assert sorted(ex.explainer for ex in rows) == ["offline", "patchscope"]
            for ex in rows:
                starts = ("fires on ", "makes ") if ex.explainer == "offline" else "the model "
                assert ex.text.startswith(starts), ex.text
                assert ex.evidence["explained_from"]
                scored = {sc.type for sc in ex.scores} | set(ex.evidence["unscored"])
                assert scored == set(SCORERS)
                for sc in ex.scores:
                    assert 0 <= sc.value <= 1, (sc.type, sc.value)
                    if sc.type in ("embedding", "keyword"):
                        assert sc.details["positives"] and sc.details["negatives"]
                    else:
                        assert sc.details["retrieved"]
                    # Never scored on a window the explainer saw.
                    used = {w["context"] for w in ex.evidence["explained_from"]}
                    windows = sc.details.get("positives", []) + sc.details.get("retrieved", [])
                    assert not used & {w["context"] for w in windows}
            # The label shown is the best scored (mean of its scores), newest on a tie.
            best = max(rows, key=lambda ex: -1 if headline_score(ex.scores) is None
                       else headline_score(ex.scores))  # fmt: skip
            label = current_label(s, f.id)
            assert label.source == "auto" and label.text == best.text
            assert label.author == best.explainer and label.score == headline_score(best.scores)
        assert explained == result.explained
        assert scores_in_unit_interval(s, sae_id)
    again = run_explain(_spec(sae_id, list(range(12))), settings=settings)
    assert again.skipped_existing == result.explained
    assert again.explained + again.skipped_dead == 12 - result.explained - result.skipped_dead


def test_a_cancelled_job_keeps_what_it_wrote_and_resumes(indexed):
    settings, sae_id = indexed
    features = list(range(12, 24))
    stop = run_explain(_spec(sae_id, features), settings=settings, should_stop=lambda: True)
    assert stop.cancelled and stop.explained == 0
    rest = run_explain(_spec(sae_id, features), settings=settings)
    assert not rest.cancelled and rest.explained + rest.skipped_dead == len(features)


def test_the_feature_api_and_page_show_explanations_with_scores(indexed):
    settings, sae_id = indexed
    run_explain(_spec(sae_id, [0, 1, 2, 3]), settings=settings)
    with catalog_session(settings) as s:
        index = next(i for i in range(4) if feature_explanations(
            s, queries.get_feature(s, sae_id, i).id))  # fmt: skip
    with TestClient(create_app(settings)) as client:
        body = client.get(f"/v1/saes/{sae_id}/features/{index}").json()
        FeatureDetail.model_validate(body)
        by = {ex["explainer"]: ex for ex in body["explanations"]}
        assert by["offline"]["prompt_version"] == "offline-v3"
        assert by["patchscope"]["prompt_version"] == "patchscope-v1"
        for ex in by.values():
            for sc in ex["scores"]:  # each score says what it means, on one scale
                assert sc["meaning"] and "0.5" in sc["meaning"] and 0 <= sc["value"] <= 1
        shown = max(by.values(), key=lambda ex: ex["headline"] or -1)
        assert body["label"]["text"] == shown["text"] and body["label"]["source"] == "auto"
        page = client.get(f"/saes/{sae_id}/features/{index}").text
        assert 'id="explanations"' in page and 'data-type="embedding"' in page
        assert 'id="score-scale"' in page and "shown as the label" in page
        assert "AUROC: the chance that" in page  # the embedding score's meaning
        hits = client.get("/v1/labels/search", params={"q": "fires", "sort": "score"})
        assert hits.status_code == 200 and hits.json()["items"]


def test_explain_route_refuses_bad_requests_before_a_job_exists(indexed):
    settings, sae_id = indexed
    with catalog_session(settings) as s:
        reader = create_api_key(s, "reader", ["label"])
        explainer = create_api_key(s, "bot", ["explain"])
        register_sae(s, sae_id="sae-bare", name="bare", model_name="m", hook_name="h",
                     architecture="topk", d_in=4, d_sae=8, k=2)  # fmt: skip
        s.commit()
    url = f"/v1/saes/{sae_id}/explanations"
    with TestClient(create_app(settings)) as client:
        assert client.post(url, json={}).status_code == 401
        assert client.post(url, json={}, headers=_bearer(reader)).status_code == 403
        cases = [
            (url, {"scorers": ["vibes"]}, 422, "vibes"),
            (url, {"scorers": ["detection"]}, 422, "needs a judge LLM"),
            (url, {"explainer": "llm"}, 422, "needs an endpoint"),
            (url, {"features": [99999]}, 422, "99999"),
            ("/v1/saes/nope/explanations", {}, 404, "nope"),
            ("/v1/saes/sae-bare/explanations", {}, 422, "has not been indexed yet"),
        ]
        for where, body, status, text in cases:
            r = client.post(where, json=body, headers=_bearer(explainer))
            assert r.status_code == status, (body, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert text in r.text


def test_explain_route_runs_a_job_that_stores_explanations(indexed):
    settings, sae_id = indexed
    with catalog_session(settings) as s:
        explainer = create_api_key(s, "bot-job", ["explain"])
        s.commit()
    url = f"/v1/saes/{sae_id}/explanations"
    body = {"features": [28, 29], "scorers": ["embedding"], "pool_contexts": 24, "n_explain": 4}
    headers = {**_bearer(explainer), "Idempotency-Key": "explain-1"}
    app = create_app(settings)
    with TestClient(app) as client:
        r = client.post(url, json=body, headers=headers)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert client.post(url, json=body, headers=headers).json()["job_id"] == job_id
        job = app.state.job_runner.wait(job_id, timeout=600)
        assert job.kind == "explain" and job.status == "succeeded", job.error
        with catalog_session(settings) as s:
            for index in (28, 29):
                feature = queries.get_feature(s, sae_id, index)
                assert feature_explanations(s, feature.id), index


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_cli_explain_and_its_bad_input(indexed):
    settings, sae_id = indexed
    with catalog_session(settings) as s:
        register_sae(s, sae_id="sae-unindexed", name="bare", model_name="m", hook_name="h",
                     architecture="topk", d_in=4, d_sae=8, k=2)  # fmt: skip
        s.commit()
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(cli_app, ["explain", *args])
        return result.exit_code, result.output.strip()

    code, out = run("--sae", sae_id, "--features", "24-25", "--scorers", "embedding")
    assert code == 0, out
    assert "explained" in out
    for args, text in [
        (["--sae", sae_id, "--scorers", "embedding,vibes"], "scorers: 'vibes' is not a scorer"),
        (["--sae", sae_id, "--scorers", "fuzzing"], "scorers: 'fuzzing' needs a judge LLM"),
        (["--sae", sae_id, "--explainer", "gpt"], "explainer"),
        (["--sae", sae_id, "--features", "3-x"], "features: '3-x'"),
        (["--sae", "sae-unindexed"], "sae: SAE 'sae-unindexed' has not been indexed yet"),
        (["--sae", "sae-nothing"], "sae-nothing"),
    ]:
        code, out = run(*args)
        assert code == 2, (args, out)
        assert text in out and "Traceback" not in out
        assert len(out.splitlines()) == 1, out


def test_own_vs_neighbour_runs_on_the_tiny_sae(indexed):
    """The bench's check end to end: each feature's own explanation against its nearest
    decoder neighbour's, per scorer, an AUROC in [0, 1] (its value on a random model
    means nothing; tests/interp/test_readable_explanations.py checks the arithmetic)."""
    settings, sae_id = indexed
    with catalog_session(settings) as s:
        check = own_vs_neighbour(s, settings, sae_id, list(range(16)), scorers=("embedding",),
                                 pool_contexts=24)  # fmt: skip
    assert set(check.auroc) == {"embedding"} and check.n["embedding"] > 0
    assert 0 <= check.auroc["embedding"] <= 1 and 0 <= check.paired["embedding"] <= 1
    for pair in check.pairs:
        assert pair.index != pair.neighbour and pair.own and pair.theirs
    assert set(SCORE_TYPES) >= set(check.auroc)
