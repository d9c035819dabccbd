"""Held-out evaluation, the short last batch, bad input, and the core record's route."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from synthetic_sets import CTX, N_CTX, make_set
from typer.testing import CliRunner

from saefeat.api.app import create_app
from saefeat.cli import app as cli
from saefeat.errors import SpecError
from saefeat.pipeline import run_train
from saefeat.specs import TrainSpec
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.set_registry import record_activation_set
from saefeat.storage.exclusion import excluded_rows, rule_for_set
from saefeat.storage.reader import ShuffledBatchReader
from saefeat.training.heldout import heldout_contexts
from saefeat.training.trainer import make_split, train_sae, train_sweep


def _spec(aset, **kw) -> TrainSpec:
    return TrainSpec(activation_set=aset.id, d_sae=32, k=4, eval_ce_contexts=0, **kw)


def test_a_one_row_last_batch_trains(settings, synthetic_set):
    """N*B+1 training rows: the epoch's last batch holds one row. Its own variance is zero;
    the loss is normalised by the set's, so two epochs train through it."""
    spec = _spec(synthetic_set)
    split = make_split(settings, spec, synthetic_set, [synthetic_set.hooks[0]])
    hook = synthetic_set.hooks[0]
    massive = excluded_rows(synthetic_set, hook, rule_for_set(synthetic_set, hook))
    rows = ShuffledBatchReader(synthetic_set, hook, 1, excluded=massive,
                               contexts=split.train_contexts).rows_per_epoch  # fmt: skip
    n, b = 2, (rows - 1) // 2
    assert n * b + 1 == rows, "the synthetic set's size no longer gives N*B+1 rows"
    result = train_sae(_spec(synthetic_set, batch_size=b, epochs=2), settings=settings)
    assert all(np.isfinite(result.losses)) and len(result.losses) == 2 * (n + 1)
    assert result.losses[n] < 10  # the one-row step: an FVU-sized number, not inf


def test_heldout_metrics_and_split(settings, synthetic_set):
    held = heldout_contexts(N_CTX, 0.05)
    assert held.sum() == 3 and (held == heldout_contexts(N_CTX, 0.05)).all()
    result = train_sae(_spec(synthetic_set, batch_size=64, epochs=1), settings=settings)
    m = result.metrics
    assert m["evaluated_on"] == "held-out typical tokens"
    assert m["heldout"]["contexts"] == 3 and m["n_tokens"] == 3 * (CTX - 1)
    assert m["excluded_tokens"]["position_0"] == 3
    assert m["excluded_tokens_train"]["tokens"] == (N_CTX - 3) * CTX
    assert 0 < m["fvu"] < 1 and "fvu_all_tokens" in m
    assert result.sae.cfg.extra["token_rule"]["threshold"] == 10.0
    core = result.core_eval["eval_result_metrics"]
    assert core["reconstruction_quality"]["explained_variance"] == pytest.approx(1 - m["fvu"])
    assert len(result.core_eval["eval_result_details"]) == 32


def test_eval_set_must_match(settings, synthetic_set):
    root = settings.activations_dir
    make_set(root, "as-other-model", model="other")
    make_set(root, "as-same", model="synthetic")
    with pytest.raises(SpecError) as e:
        train_sae(_spec(synthetic_set, eval_set="as-other-model"), settings=settings)
    assert e.value.field == "eval_set" and "model" in str(e.value)
    with pytest.raises(SpecError) as e:
        train_sae(_spec(synthetic_set, eval_set="as-missing"), settings=settings)
    assert e.value.field == "eval_set"
    r = train_sae(_spec(synthetic_set, eval_set="as-same", batch_size=64), settings=settings)
    assert r.metrics["heldout"] == {"eval_set": "as-same", "contexts": N_CTX,
                                    "held_out_of_training_set": False}  # fmt: skip


@pytest.mark.parametrize(("args", "field"), [
    (["--massive-norm-threshold", "1"], "massive_norm_threshold"),
    (["--heldout-frac", "0.5"], "heldout_frac"),
    (["--heldout-frac", "0"], "heldout_frac"),
    (["--optimizer-state", "fp16"], "optimizer_state"),
])  # fmt: skip
def test_bad_train_options_are_one_line(settings, args, field):
    out = CliRunner().invoke(cli, ["train", "--set", "as-x", *args])
    assert out.exit_code == 2
    assert field in out.output and len(out.output.strip().splitlines()) == 1


def test_core_eval_is_stored_and_served(settings, synthetic_set):
    with catalog_session(settings) as s:
        record_activation_set(s, synthetic_set)
        s.commit()
    result = run_train(_spec(synthetic_set, batch_size=64, epochs=0.5), settings=settings)
    with TestClient(create_app(settings)) as client:
        got = client.get(f"/v1/saes/{result.sae_id}/evals/core")
        assert got.status_code == 200
        body = got.json()
        assert body["eval_type_id"] == "core" and body["sae_lens_id"] == result.sae_id
        assert set(body["eval_result_metrics"]) >= {
            "model_behavior_preservation", "model_performance_preservation",
            "reconstruction_quality", "shrinkage", "sparsity", "misc"}  # fmt: skip
        assert body == json.loads((result.checkpoint / "core_eval.json").read_text())
        missing = client.get("/v1/saes/sae-none/evals/core")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        listed = client.get("/v1/saes").json()["items"][0]
        assert "eval_result_details" not in json.dumps(listed)


def test_a_sweep_over_hooks_with_different_massive_tokens(settings):
    """Massive tokens on one hook only: both hooks' readers leave out the union, so they
    serve the same rows in lockstep to the end of the epoch."""
    settings.activations_dir.mkdir(parents=True, exist_ok=True)
    aset = make_set(settings.activations_dir, "as-massive", massive={0: [(4, 1), (30, 2)]})
    specs = [_spec(aset, hook=h, batch_size=50, epochs=1) for h in aset.hooks]
    results = train_sweep(specs, settings=settings)
    assert [len(r.losses) for r in results] == [len(results[0].losses)] * 2
    train = results[0].metrics["excluded_tokens_train"]
    assert train["massive"] + results[0].metrics["excluded_tokens"]["massive"] == 2
    assert results[1].metrics["excluded_tokens_train"]["massive"] == 0
