"""What a job submitted over HTTP may name, checked before any job row is written: ids
that are ids (never paths), a device the cluster has and the training honours, an
explain seed in range, label scores on their scale, corpus folders whose every file lies
under the corpus roots, and resource refusals that say what the cluster has.

Every refusal is a 422 problem+json naming the field, and leaves the job table empty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from problems import bearer, problem_of
from sqlalchemy import func, select

from saefeat.admission import Resources, cluster_resources
from saefeat.api.app import create_app
from saefeat.specs import TrainJobSpec
from saefeat.storage.activations import ActivationSet
from saefeat.storage.catalog.models import Job
from saefeat.storage.stats import set_statistics
from saefeat.workers.train_job import ray_options

HOOK = "blocks.1.hook_resid_post"
N_CTX, CTX, D = 8, 4, 8


def make_set(root, set_id: str, model: str = "m", d: int = D, complete: bool = True) -> None:
    """A small activation set in `root` (complete, unless asked otherwise)."""
    root.mkdir(parents=True, exist_ok=True)
    tokens = np.random.default_rng(0).integers(0, 50, (N_CTX, CTX))
    aset = ActivationSet.create(
        root / f"{set_id}.zarr", set_id=set_id, spec={"model": model}, model=model,
        hooks=[HOOK], d_model=d, tokens=tokens, doc_index=np.zeros(N_CTX),
        doc_offset=np.zeros(N_CTX), doc_ids=["d"], contexts_per_shard=4,
        storage_dtype="float32",
    )  # fmt: skip
    rows = torch.randn(N_CTX * CTX, d, generator=torch.Generator().manual_seed(0))
    for shard in range(aset.n_shards):
        r0, r1 = aset.shard_rows(shard)
        aset.write_shard(shard, {HOOK: rows[r0:r1]})
    if complete:
        aset.mark_complete(set_statistics(aset))


TRAIN_SET, OTHER_SET = "as-00000000000000aa", "as-00000000000000bb"


@pytest.fixture
def served(make_settings, tmp_path):
    """A server whose home holds a complete training set; another home beside it holds
    a complete set of the same shape (what the issue evaluated on through `..`)."""
    settings = make_settings(home=tmp_path / "home", corpus_roots=[tmp_path / "corpora"])
    make_set(settings.activations_dir, TRAIN_SET)
    make_set(tmp_path / "other-home" / "activations", OTHER_SET)
    (tmp_path / "corpora").mkdir()
    return settings


@pytest.fixture
def api(served):
    app = create_app(served)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client


@pytest.fixture
def admin(key_of):
    return key_of("admin", ["admin"])


@pytest.fixture
def key_of(api):
    from saefeat.storage.catalog.keys import create_api_key

    app, _ = api

    def key(name: str, scopes: list[str]) -> dict[str, str]:
        with app.state.sessionmaker() as s:
            made = create_api_key(s, name, scopes)
            s.commit()
        return bearer(made)

    return key


def job_rows(app) -> int:
    with app.state.sessionmaker() as s:
        return s.scalar(select(func.count()).select_from(Job))


def refused(api, headers, url: str, body: dict, field: str) -> dict:
    app, client = api
    problem = problem_of(client.post(url, json=body, headers=headers), 422)
    assert [e["field"] for e in problem["errors"]] == [field], problem
    assert job_rows(app) == 0
    return problem


# ---- ids ---------------------------------------------------------------------------

TRAVERSAL = f"../../other-home/activations/{OTHER_SET}"


@pytest.mark.parametrize(
    ("eval_set", "field"),
    [
        (TRAVERSAL, "specs.0.eval_set"),  # a path into another home: not an id
        (f"/abs/{OTHER_SET}", "specs.0.eval_set"),
        ("..", "specs.0.eval_set"),
        ("x" * 129, "specs.0.eval_set"),
        (OTHER_SET, "specs.0.eval_set"),  # an id, but not a set of this server
    ],
)
def test_eval_set_is_an_id_of_this_servers_sets(api, admin, eval_set, field):
    body = {"activation_set": TRAIN_SET, "eval_set": eval_set}
    refused(api, admin, "/v1/trainings", body, field)


def test_a_missing_and_an_incomplete_eval_set_are_refused_before_the_job(api, admin, served):
    make_set(served.activations_dir, "as-00000000000000cc", complete=False)
    for eval_set in ("as-00000000000000dd", "as-00000000000000cc"):
        body = {"activation_set": TRAIN_SET, "eval_set": eval_set}
        problem = refused(api, admin, "/v1/trainings", body, "specs.0.eval_set")
        assert "harvest it first" in problem["detail"]


def test_an_eval_set_of_another_model_is_refused_at_admission(api, admin, served):
    make_set(served.activations_dir, "as-00000000000000ee", model="another")
    body = {"activation_set": TRAIN_SET, "eval_set": "as-00000000000000ee"}
    problem = refused(api, admin, "/v1/trainings", body, "specs.0.eval_set")
    assert "model" in problem["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [  # a transcoder's pair: hooks of two layers, not the MLP's, or not in the set
        ({"hook": "blocks.1.ln2.hook_normalized", "hook_out": "blocks.2.hook_mlp_out"},
         "specs.0.hook"),
        ({"hook": "blocks.1.hook_resid_post", "hook_out": "blocks.1.hook_mlp_out"},
         "specs.0.hook"),
        ({"hook": "blocks.1.ln2.hook_normalized.x", "hook_out": "blocks.1.hook_mlp_out"},
         "specs.0.hook"),
        ({"hook": "blocks.1.hook_mlp_in", "hook_out": "blocks.1.hook_resid_post"},
         "specs.0.hook_out"),
        ({"hook_out": "blocks.1.hook_mlp_out"}, "specs.0.hook"),
        ({"hook": "blocks.1.ln2.hook_normalized", "hook_out": "blocks.1.hook_mlp_out"},
         "specs.0.hook"),
        ({"skip_connection": True}, "specs.0.skip_connection"),
    ],
)  # fmt: skip
def test_a_bad_transcoder_pair_is_422_naming_the_field(api, admin, change, field):
    problem = refused(api, admin, "/v1/trainings", {"activation_set": TRAIN_SET} | change, field)
    assert any(w in problem["detail"] for w in ("transcoder", "not in set", "not a hook name"))


def test_a_pipelines_eval_set_is_an_id_too(api, admin):
    body = {"stages": ["train"], "train": {"activation_set": TRAIN_SET, "eval_set": TRAVERSAL}}
    refused(api, admin, "/v1/pipelines", body, "train.eval_set")


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/v1/trainings", {"activation_set": "../as-00000000000000aa"}, "specs.0.activation_set"),
        ("/v1/indexings", {"sae": "../../saes/sae-a"}, "sae"),
        ("/v1/contrasts", {"sae": "a/b", "a": "as-1", "b": "as-2"}, "sae"),
        ("/v1/contrasts", {"sae": "sae-a", "a": "../as-1", "b": "as-2"}, "a"),
        ("/v1/contrasts", {"sae": "sae-a", "a": "as-1", "b": ".."}, "b"),
        ("/v1/pipelines", {"stages": ["index"], "index": {"sae": "/etc"}}, "index.sae"),
        ("/v1/pipelines", {"stages": ["explain"], "explain": {"sae": "a/../b"}}, "explain.sae"),
    ],
)
def test_every_id_field_refuses_a_path(api, admin, url, body, field):
    problem = refused(api, admin, url, body, field)
    assert "is not an id" in problem["detail"]


def test_an_explain_sae_in_the_path_is_an_id(api, key_of):
    headers = key_of("explainer", ["label", "explain"])
    # %2E%2E is "..": one path part to the router, never an id.
    refused(api, headers, "/v1/saes/%2E%2E/explanations", {}, "sae")


def test_ids_saefeat_makes_and_imports_keep_still_validate():
    """Stored ids stay valid: trained SAE ids (12 digits), set ids (16), imported names."""
    for sae in ("sae-0123456789ab", "my_imported.sae-v2"):
        spec = TrainJobSpec.model_validate({"activation_set": "as-0123456789abcdef",
                                            "eval_set": "as-x", "name": sae})  # fmt: skip
        assert spec.specs[0].eval_set == "as-x"
    from saefeat.specs import ContrastSpec, IndexSpec

    assert IndexSpec(sae="my_imported.sae-v2").sae == "my_imported.sae-v2"
    assert ContrastSpec(sae="sae-0123456789ab", a="as-1", b="as-2").b == "as-2"


# ---- devices and resources ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"device": "cuda:7"}, "specs.0.device"),  # no machine here has 8 GPUs
        ({"device": "tpu"}, "specs.0.device"),
        ({"device": "cpu", "job_device": "cuda"}, "specs.0.device"),  # disagree
    ],
)
def test_a_train_specs_device_is_refused_unless_it_can_be_honoured(api, admin, change, field):
    spec = {"activation_set": TRAIN_SET, "device": change["device"]}
    body = {"specs": [spec]} | ({"device": change["job_device"]} if "job_device" in change else {})
    refused(api, admin, "/v1/trainings", body, field)


@pytest.mark.parametrize(("device", "gpus", "on_gpu"),
                         [("cpu", 1, False), ("cuda", 1, True), ("cuda:0", 1, True),
                          (None, 1, True), (None, 0, False)])  # fmt: skip
def test_training_is_placed_on_the_device_its_spec_names(device, gpus, on_gpu):
    """A spec's cpu used to be overridden by the job's auto (a GPU when there is one)."""
    job = TrainJobSpec(specs=[{"activation_set": TRAIN_SET, "device": device}])
    assert ray_options(job, gpus)["num_gpus"] == (1 if on_gpu else 0)


@pytest.mark.parametrize("name", ["CPU", "GPU"])
def test_cpu_and_gpu_in_resources_are_refused_with_what_the_cluster_has(api, admin, served, name):
    body = {"specs": [{"activation_set": TRAIN_SET}], "resources": {name: 2}}
    problem = refused(api, admin, "/v1/trainings", body, f"resources.{name}")
    res = cluster_resources(served)
    have = res.cpus if name == "CPU" else res.gpus
    assert f"the cluster has {have} {name}(s) in all" in problem["detail"]


# ---- explain seed and label scores ---------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_an_explain_seed_out_of_numpys_range_is_422(api, key_of, seed):
    headers = key_of("explainer", ["label", "explain"])
    refused(api, headers, "/v1/saes/sae-a/explanations", {"seed": seed}, "seed")


@pytest.mark.parametrize("score", [1e308, 1.0000001, -0.5, -1e308])
def test_a_label_score_off_the_unit_scale_is_422_and_stores_nothing(app, client, catalog, keys,
                                                                    score):  # fmt: skip
    url = "/v1/saes/sae-a/features/3/labels"
    body = {"text": "x", "source": "auto", "score": score}
    problem = problem_of(client.post(url, json=body, headers=bearer(keys["explain"])), 422)
    assert [e["field"] for e in problem["errors"]] == ["score"]
    assert client.get(url).json()["items"] == []
    for ok in (0, 1):
        made = client.post(url, json=body | {"score": ok}, headers=bearer(keys["explain"]))
        assert made.status_code == 201 and made.json()["score"] == ok


# ---- corpus folders ----------------------------------------------------------------------


@pytest.fixture
def leaky_folder(tmp_path):
    """corpora/docs: one file inside, one symlink to a file outside the corpus roots."""
    docs = tmp_path / "corpora" / "docs"
    docs.mkdir(parents=True)
    (docs / "a.txt").write_text("inside " * 50)
    (tmp_path / "secret.txt").write_text("the secret " * 50)
    (docs / "leak.txt").symlink_to(tmp_path / "secret.txt")
    return docs


def test_a_corpus_folder_with_a_symlink_out_is_refused_at_admission(api, admin, leaky_folder):
    harvest = {"hooks": ["blocks.0.hook_resid_post"], "corpus": ["docs"]}
    problem = refused(api, admin, "/v1/harvests", harvest, "corpus.0.path")
    assert "leak.txt" in problem["detail"] and "secret" not in problem["detail"]
    contrast = {"sae": "sae-a", "a_corpus": ["docs"], "b_corpus": ["builtin:python-docs"]}
    refused(api, admin, "/v1/contrasts", contrast, "a_corpus.0.path")
    pipeline = {"stages": ["harvest"], "harvest": harvest}
    refused(api, admin, "/v1/pipelines", pipeline, "harvest.corpus.0.path")
    (leaky_folder / "leak.txt").unlink()  # the folder alone passes this check
    app, client = api
    from saefeat.admission import Admission, admit_harvest
    from saefeat.specs import HarvestSpec

    admit_harvest(HarvestSpec(**harvest), Admission(app.state.settings))


def test_a_busy_cluster_is_described_by_its_totals_and_what_is_free(monkeypatch):
    """The harvest's wait message read "the cluster has CPU 0 free of 2": it has 2."""
    from saefeat.workers import harvest

    monkeypatch.setattr(harvest.ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 1e9})
    monkeypatch.setattr(harvest.ray, "available_resources", lambda: {})
    assert harvest._resources() == "2 CPU(s) in all, 0 free now"


def test_devices_that_disagree_are_refused_on_a_cluster_with_gpus(api, admin, monkeypatch):
    """One task trains a sweep: its specs and the job name one side, GPU or CPU."""
    from saefeat import admission

    monkeypatch.setattr(admission, "cluster_resources", lambda s: Resources(cpus=2, gpus=2))
    specs = [{"activation_set": TRAIN_SET, "device": "cpu"},
             {"activation_set": TRAIN_SET, "device": "cuda:1", "d_sae": 64}]  # fmt: skip
    for body, field in (({"specs": specs}, "specs.1.device"),
                        ({"specs": specs[1:], "device": "cpu"}, "specs.0.device"),
                        ({"specs": specs[:1], "device": "cuda"}, "specs.0.device")):  # fmt: skip
        assert "disagrees" in refused(api, admin, "/v1/trainings", body, field)["detail"]
    refused(api, admin, "/v1/trainings", {"specs": [specs[0] | {"device": "cuda:2"}]},
            "specs.0.device")  # fmt: skip


def test_a_harvest_of_a_layer_the_model_lacks_is_refused_before_the_job(api, admin):
    """SmolLM2-135M has layers 0..29: layer 30 (or a leading zero) never makes a job row."""
    for hook, words in (("blocks.30.hook_mlp_in", "layers 0..29"),
                        ("blocks.05.hook_mlp_in", "not a hook name")):  # fmt: skip
        problem = refused(api, admin, "/v1/harvests", {"hooks": [hook], "token_budget": 100},
                          "hooks")  # fmt: skip
        assert words in problem["detail"], problem
