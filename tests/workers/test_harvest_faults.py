"""A real local Ray: worker deaths, a shard that always kills its worker, cancel + resume."""

from __future__ import annotations

import pytest
from crashing_harvester import crashes, crashing_worker
from harvest_refs import assert_same_data, reference_set

from saefeat.storage.activations import STATUS_COMPLETE, STATUS_COMPLETE_WITH_GAPS
from saefeat.workers import harvest as harvest_module
from saefeat.workers.harvest import HarvestCancelled, harvest


def test_killed_worker_is_retried_and_data_matches_one_process(
    spec, settings, ray_session, tmp_path, monkeypatch
):
    # die mid-write on the first try of shards 2 and 3
    monkeypatch.setattr(harvest_module, "HarvestWorker", crashing_worker({2: 1, 3: 1}))
    result = harvest(spec, settings=settings)
    aset = result.activation_set
    assert not result.skipped, result.skipped
    assert aset.status == STATUS_COMPLETE
    assert crashes(aset, 2) == 1 and crashes(aset, 3) == 1
    assert aset.committed_shards() == list(range(aset.n_shards)) and aset.verify() == []
    assert_same_data(aset, reference_set(spec, tmp_path / "ref"))
    # Both sources made it into the mix, and every context appears once.
    doc_ids = aset.group.attrs["doc_ids"]
    assert any(d.startswith("0/") for d in doc_ids) and any(d.startswith("1/") for d in doc_ids)


def test_shard_that_always_kills_its_worker_is_skipped(
    spec, settings, ray_session, tmp_path, monkeypatch
):
    monkeypatch.setattr(harvest_module, "HarvestWorker", crashing_worker({1: -1}))
    spec = spec.model_copy(update={"max_shard_attempts": 2})
    result = harvest(spec, settings=settings)
    aset = result.activation_set
    assert list(result.skipped) == [1] and "died on all 2 attempts" in result.skipped[1]
    assert crashes(aset, 1) == 2
    assert aset.status == STATUS_COMPLETE_WITH_GAPS and list(aset.skipped_shards) == ["1"]
    others = [s for s in range(aset.n_shards) if s != 1]
    assert aset.committed_shards() == others
    assert_same_data(aset, reference_set(spec, tmp_path / "ref"), shards=others)
    # Once the cause is gone, a resubmit redoes only the gap.
    monkeypatch.undo()
    again = harvest(spec, settings=settings)
    assert again.shards_run == 1 and again.activation_set.status == STATUS_COMPLETE


def test_cancel_then_resume(spec, settings, ray_session, tmp_path):
    seen = []

    def progress(done, total):
        seen.append(done)

    def first_shard_done() -> bool:
        return bool(seen) and seen[-1] > 0

    with pytest.raises(HarvestCancelled):
        harvest(spec, settings=settings, progress=progress, should_stop=first_shard_done)
    from saefeat.storage.activations import open_set

    aset = open_set(settings.activations_dir, spec.set_id())
    n_done = len(aset.committed_shards())
    assert 0 < n_done < aset.n_shards and aset.status == "harvesting"
    result = harvest(spec, settings=settings)
    assert result.shards_run == aset.n_shards - n_done
    assert_same_data(result.activation_set, reference_set(spec, tmp_path / "ref"))


def test_workers_that_cannot_start_fail_the_harvest_clearly(
    spec, settings, ray_session, tmp_path, tiny_llama
):
    import shutil

    from saefeat.errors import SaefeatError

    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_llama, broken)
    for f in broken.glob("*.safetensors"):
        f.unlink()  # config and tokenizer load (the corpus packs), the weights do not
    spec = spec.model_copy(update={"model": str(broken)})
    with pytest.raises(SaefeatError, match="harvest workers failed to start: .*Error"):
        harvest(spec, settings=settings)


def test_in_this_process_cancel_then_resume_matches_one_process(
    spec, settings, tmp_path, monkeypatch
):
    """Inside work_here() (the CLI) a one-worker harvest runs here, no Ray: the same data,
    progress within a shard (each forward batch), and a cancel that a rerun resumes."""
    from saefeat.storage.activations import open_set
    from saefeat.workers.runtime import work_here

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a one-worker harvest")

    monkeypatch.setattr(harvest_module, "ensure_ray", no_ray)
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))

    def two_shards_in() -> bool:
        return bool(seen) and seen[-1][0] >= 2 * spec.contexts_per_shard * spec.ctx_len

    with work_here(), pytest.raises(HarvestCancelled):
        harvest(spec, settings=settings, progress=progress, should_stop=two_shards_in)
    aset = open_set(settings.activations_dir, spec.set_id())
    n_done = len(aset.committed_shards())
    assert 0 < n_done < aset.n_shards and aset.status == "harvesting"
    # batch_size 2 of 4 contexts a shard: two reports a shard, the first mid-shard
    per_batch = spec.batch_size * spec.ctx_len
    assert seen[1][0] == per_batch and all(t == aset.n_tokens for _, t in seen)
    seen.clear()
    with work_here():
        result = harvest(spec, settings=settings, progress=progress)
    assert result.shards_run == aset.n_shards - n_done
    assert seen[-1] == (aset.n_tokens, aset.n_tokens)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # never goes back
    assert_same_data(result.activation_set, reference_set(spec, tmp_path / "ref"))
