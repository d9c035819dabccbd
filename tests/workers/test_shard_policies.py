"""One shard in-process: NaN/Inf policies, and the CLI's harvest recorded as a job."""

from __future__ import annotations

import pytest
import torch
from harvest_refs import HOOKS, own_roots
from typer.testing import CliRunner

from saefeat.storage.reader import ShuffledBatchReader
from saefeat.storage.stats import hook_statistics
from saefeat.workers import shard as shard_mod
from saefeat.workers.harvest import prepare_set
from saefeat.workers.shard import NonFiniteActivations, ShardHarvester

BAD_CONTEXT = 1  # within shard 0


@pytest.fixture
def nan_forward(monkeypatch):
    """The forward of the first batch puts a NaN into context BAD_CONTEXT at one hook."""
    real = shard_mod.run_to_hooks
    calls = []

    def forward(lm, tokens, points):
        acts = real(lm, tokens, points)
        if not calls:
            acts[HOOKS[1]] = acts[HOOKS[1]].clone()
            acts[HOOKS[1]][BAD_CONTEXT, 3, 0] = float("nan")
        calls.append(1)
        return acts

    monkeypatch.setattr(shard_mod, "run_to_hooks", forward)


def test_nonfinite_fail_commits_nothing(spec, tmp_path, nan_forward):
    aset, _ = prepare_set(spec, tmp_path, own_roots(spec))
    worker = ShardHarvester(spec.model_dump_json(), str(aset.path), "cpu", threads=1)
    with pytest.raises(NonFiniteActivations, match="on_nonfinite='drop'"):
        worker.harvest_shard(0)
    assert aset.committed_shards() == []


@pytest.mark.parametrize("batch_size", [2, 4])  # 4: the whole shard in one forward
def test_nonfinite_drop_is_recorded_and_skipped_by_readers(spec, tmp_path, nan_forward, batch_size):
    spec = spec.model_copy(update={"on_nonfinite": "drop", "batch_size": batch_size})
    aset, _ = prepare_set(spec, tmp_path, own_roots(spec))
    worker = ShardHarvester(spec.model_dump_json(), str(aset.path), "cpu", threads=1)
    for s in range(aset.n_shards):
        worker.harvest_shard(s)
    assert aset.commit_record(0).dropped == [BAD_CONTEXT] and aset.dropped_contexts() == [1]
    L = aset.ctx_len
    for h in HOOKS:  # the whole context is zeroed at every hook, so the shard stays whole
        x = aset.read_shard(0, h, verify=True)
        assert torch.isfinite(x).all() and not x[BAD_CONTEXT * L : (BAD_CONTEXT + 1) * L].any()
    reader = ShuffledBatchReader(aset, HOOKS[1], 7, skip_first_position=False)
    assert reader.rows_per_epoch == aset.n_tokens - L
    assert hook_statistics(aset, HOOKS[1])["n_rows"] == (aset.n_contexts - 1) * (L - 1)


def test_cli_harvest_is_a_job(spec, settings, ray_session):
    from saefeat.cli import app

    cli = CliRunner()
    args = ["harvest", "--model", spec.model, "--ctx-len", "16", "--tokens", "64",
            "--shard-contexts", "2", "--storage-dtype", "float32"]  # fmt: skip
    for h in HOOKS:
        args += ["--hook", h]
    r = cli.invoke(app, args)
    assert r.exit_code == 0, r.output
    listed = cli.invoke(app, ["jobs"])
    assert listed.exit_code == 0 and "succeeded" in listed.output and "harvest" in listed.output
