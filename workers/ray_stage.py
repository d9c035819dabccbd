"""Running one job stage as a Ray task, driven from a job thread that stays light.

The task does the work (loads the SAE, the model, the data) on whichever node Ray places
it given the resources it declares; the job thread only waits, passes progress on and
polls for a stop. Progress goes through a small actor pinned to the driver's node (a
node that dies must not take the progress with it). A task whose worker or node dies
is retried by Ray (`max_retries`) once its resources are back: the stages it runs pick
up from what they committed (training from its last checkpoint), so a retry resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray

from saefeat.workers.job_kinds import JobStopped
from saefeat.workers.job_progress import Progress, ShouldStop

POLL_S = 0.5  # how often the job thread looks at the task, its progress and the stop flag
SYSTEM_RETRIES = 5  # times Ray re-runs the task after its worker or node died


@ray.remote(num_cpus=0)
class ProgressBox:
    """The latest (done, total) a stage reported, and the step it started at."""

    def __init__(self) -> None:
        self.done, self.total, self.first = 0, None, []

    def set(self, done: int, total: int, attempt_start: bool = False) -> None:
        if attempt_start:  # each attempt's first report: where it started (resumed)
            self.first.append(done)
        self.done, self.total = done, total

    def get(self) -> tuple[int, int | None, list[int]]:
        return self.done, self.total, self.first


def new_progress_box():
    here = ray.get_runtime_context().get_node_id()
    strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=False)
    return ProgressBox.options(scheduling_strategy=strategy).remote()


def run_on_ray(
    fn: Callable[..., Any],
    args: tuple,
    options: dict[str, Any],
    *,
    progress: Progress | None,
    should_stop: ShouldStop,
) -> tuple[Any, list[int]]:
    """Run `fn(*args, box)` as a Ray task with `options` (resources), waiting in this
    thread; returns what it returned and the step each attempt started at. A stop
    kills the task (what it committed stays) and raises JobStopped; an error the task
    raised is raised here as itself."""
    box = new_progress_box()
    task = ray.remote(fn).options(max_retries=SYSTEM_RETRIES, retry_exceptions=False, **options)
    ref = task.remote(*args, box)
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=POLL_S)
            done, total, first = ray.get(box.get.remote())
            if progress is not None and total:
                progress(done, total)
            if ready:
                break
            if should_stop():
                ray.cancel(ref, force=True)
                try:
                    ray.get(ref)
                except Exception:  # cancelled: the worker is gone, nothing writes any more
                    pass
                raise JobStopped("stopped on request; what was committed stays")
        try:
            return ray.get(ref), ray.get(box.get.remote())[2]
        except ray.exceptions.RayTaskError as e:
            raise e.cause from None  # the stage's own error (SpecError, ...), not Ray's wrap
    finally:
        ray.kill(box)


def report_to(box) -> Callable[..., None]:
    """Inside the task: a progress callback that tells the box (fire and forget). Each
    attempt makes its own, so its first report is marked as where that attempt started."""
    started = []

    def report(done: int, total: int, *_: Any) -> None:
        box.set.remote(done, total, not started)
        started.append(True)

    return report
