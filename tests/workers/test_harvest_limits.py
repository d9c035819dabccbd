"""Harvests that can never start fail with the reason in bounded time, and a cancel
stops one that waits for its workers: a real local Ray (2 CPUs, no GPU)."""

from __future__ import annotations

import threading

import pytest

from saefeat.errors import SaefeatError, SpecError
from saefeat.workers import harvest as harvest_mod
from saefeat.workers.harvest import HarvestCancelled, harvest


def test_workers_this_machine_cannot_hold_fail_at_once(spec, settings, ray_session):
    with pytest.raises(SpecError, match=r"needs 1 GPU\(s\) .* has 0") as e:
        harvest(spec.model_copy(update={"device": "cuda:7"}), settings=settings)
    assert e.value.field == "device"
    with pytest.raises(SpecError, match=r"needs 3 CPU\(s\) for 3 worker") as e:
        harvest(spec.model_copy(update={"workers": 3}), settings=settings)
    assert e.value.field == "workers"


@pytest.fixture
def no_precheck(monkeypatch):
    """As on a cluster, where more nodes may come: only the schedule timeout bounds
    the wait for workers Ray cannot place."""
    monkeypatch.setattr(harvest_mod, "_check_fits", lambda options, n: None)


def test_workers_never_scheduled_fail_after_the_schedule_timeout(
    spec, settings, ray_session, no_precheck
):
    settings = settings.model_copy(update={"schedule_timeout_s": 3.0})
    with pytest.raises(SaefeatError, match=r"not up within 3s .* \{'num_gpus': 1"):
        harvest(spec.model_copy(update={"device": "cuda:7"}), settings=settings)


def test_cancel_stops_a_harvest_waiting_for_its_workers(spec, settings, ray_session, no_precheck):
    stop = threading.Event()
    waiting = threading.Timer(2.0, stop.set)  # cancel while the actor waits for a GPU
    waiting.start()
    with pytest.raises(HarvestCancelled):
        harvest(spec.model_copy(update={"device": "cuda:7"}), settings=settings,
                should_stop=stop.is_set)  # fmt: skip
    waiting.cancel()


def test_two_harvests_that_each_need_the_whole_cluster_both_finish(spec, settings, ray_session):
    """Two harvests of 2 workers on 2 CPUs at once: each is placed whole or waits whole.
    Placed worker by worker, each could hold one CPU and wait for the other's forever
    (it did about one time in two)."""
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            one = spec.model_copy(update={"workers": 2, "token_budget": 16 * (20 + i)})
            results[i] = harvest(one, settings=settings)
        except BaseException as e:  # noqa: BLE001 - shown by the assertion below
            results[i] = e

    for round_ in range(3):
        base = 100 * round_
        threads = [threading.Thread(target=run, args=(base + i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not any(t.is_alive() for t in threads), f"round {round_}: the harvests hung"
        for i in (base, base + 1):
            assert not isinstance(results[i], BaseException), results[i]
