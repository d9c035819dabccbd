"""The harvest: tokenize and pack the corpus, then Ray actors fill the set shard by shard.

Each actor loads the model once and pulls shards; it runs the forward only up to the
deepest hooked layer, writes the shard's rows for every hook, fsyncs, and commits.
A shard is only visible once committed, so nothing is ever counted twice.

Fault tolerance: Ray restarts an actor whose process dies (`max_restarts=-1`); the
driver, not Ray, retries the shards that were in flight (`max_task_retries=0`), because
only the driver can count attempts per shard. A shard that was in flight when its actor
died runs alone on an actor next time, so a shard that kills its worker every time does
not take innocent shards down with it; after `spec.max_shard_attempts` deaths it is
skipped, recorded, and the set is marked `complete_with_gaps`.

Inside `runtime.work_here()` (the CLI) a harvest that would start one worker runs it in
this process instead, with no Ray to start: the same harvester, shards in the same
order, one being written while the next runs. A crash there ends the process; its
committed shards stay, and running the spec again resumes.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from saefeat.config import Settings
from saefeat.corpus import CorpusReport, CorpusRoots, mix_sources, pack_contexts
from saefeat.devices import on_gpu, pick_device
from saefeat.errors import SaefeatError, SpecError
from saefeat.lm import model_config_and_tokenizer, parse_hook
from saefeat.specs import HarvestSpec
from saefeat.storage.activations import STATUS_COMPLETE, ActivationSet
from saefeat.storage.stats import set_statistics
from saefeat.workers.job_kinds import JobBusy, JobStopped
from saefeat.workers.job_progress import Progress, ShouldStop
from saefeat.workers.runtime import ensure_ray, gpus_available, runs_here, task_cpus
from saefeat.workers.shard import IN_FLIGHT, ShardHarvester

log = logging.getLogger(__name__)
__all__ = ["HarvestResult", "HarvestWorker", "ShardHarvester", "harvest"]


class HarvestCancelled(JobStopped):
    """The job was cancelled; committed shards stay valid and a resubmit resumes."""

    status_code = 409


class HarvestBusy(JobBusy):
    """Another process is harvesting this set right now."""

    status_code = 409


class _RayShardHarvester(ShardHarvester):
    def where(self) -> tuple[str, int]:
        """(node id, pid): lets the driver wait for this process to be gone. Answers
        once the model is loaded, like ready()."""
        return ray.get_runtime_context().get_node_id(), os.getpid()


def remote_harvester(cls: type[ShardHarvester]):
    """The Ray actor class of a harvester: restarted when its process dies, a task never
    retried by Ray (the driver counts the attempts), one shard in the forward while
    another is written."""
    return ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=IN_FLIGHT)(cls)


# The actor class harvests start; tests put a harvester that dies here (the fault seam).
HarvestWorker = remote_harvester(_RayShardHarvester)


def _resources() -> str:
    """What the cluster has in all and what is free now: "has 0" misread a busy cluster."""
    total, free = ray.cluster_resources(), ray.available_resources()
    keys = [k for k in ("CPU", "GPU") if k in total or k in free]
    return ", ".join(f"{total.get(k, 0):g} {k}(s) in all, {free.get(k, 0):g} free now"
                     for k in keys) or "no CPU or GPU"  # fmt: skip


def _fits_in_all(options: dict, n_workers: int) -> bool:
    """Whether the cluster, all of it free, could hold the workers."""
    total = ray.cluster_resources()
    need = {"CPU": options.get("num_cpus", 0), "GPU": options.get("num_gpus", 0)}
    return all(n_workers * n <= total.get(k, 0) for k, n in need.items() if n)


def _check_fits(options: dict, n_workers: int) -> None:
    """Fail at once when the workers can never be scheduled on this machine."""
    key, what, field = ("num_gpus", "GPU", "device") if "num_gpus" in options else (
        "num_cpus", "CPU", "workers")  # fmt: skip
    need, have = n_workers * options[key], ray.cluster_resources().get(what, 0)
    if need > have:
        raise SpecError(
            f"the harvest needs {need:g} {what}(s) for {n_workers} worker(s) but this "
            f"machine's Ray has {have:g}; lower `workers` or choose another `device`",
            field=field,
        )


def _process_alive(pid: int) -> bool:
    """A pid that is gone or a zombie (exited, not yet reaped) can write nothing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@dataclass
class HarvestResult:
    activation_set: ActivationSet
    reused: bool
    shards_run: int
    seconds: float
    report: CorpusReport | None
    skipped: dict[int, str] = field(default_factory=dict)  # shard -> why
    dropped_contexts: int = 0  # contexts left out for NaN/Inf (on_nonfinite="drop")
    startup_seconds: float = 0.0  # Ray actors up and the model loaded
    shard_seconds: float = 0.0  # first shard sent to last shard committed
    tokens_run: int = 0  # tokens of the shards committed in this run
    # A paired harvest (harvest_job.harvest_and_record): the paired model's side; this
    # one is the model's.
    paired: HarvestResult | None = None

    def sides(self) -> list[HarvestResult]:
        """This side, then the paired model's (a paired harvest)."""
        return [self] if self.paired is None else [self, self.paired]


def prepare_set(
    spec: HarvestSpec, root: Path, corpus_roots: CorpusRoots
) -> tuple[ActivationSet, CorpusReport | None]:
    """Open the set this spec names, or tokenize the corpus (read only from under
    `corpus_roots`) and create it."""
    path = root / f"{spec.set_id()}.zarr"
    if (path / "zarr.json").is_file():
        return ActivationSet(path), None
    config, tokenizer = model_config_and_tokenizer(spec.model, spec.revision)
    n_layers = config.num_hidden_layers
    for h in spec.hooks:
        p = parse_hook(h)
        if p.layer >= n_layers:
            raise SpecError(
                f"{h}: layer {p.layer} does not exist; {spec.model} has layers 0..{n_layers - 1}",
                field="hooks",
            )
    report = CorpusReport()
    docs = mix_sources(
        [(src.path, src.field, src.weight) for src in spec.corpus],
        roots=corpus_roots,
        report=report,
        on_bad=spec.on_bad_document,
        text_documents=spec.text_documents,
    )
    packed = pack_contexts(
        docs,
        tokenizer,
        ctx_len=spec.ctx_len,
        token_budget=spec.token_budget,
        bos=spec.bos,
        report=report,
    )
    root.mkdir(parents=True, exist_ok=True)
    aset = ActivationSet.create(
        path,
        set_id=spec.set_id(),
        spec=spec.model_dump(mode="json"),
        model=spec.model,
        hooks=list(spec.hooks),
        d_model=config.hidden_size,
        n_layers=n_layers,
        tokens=packed.tokens,
        doc_index=packed.doc_index,
        doc_offset=packed.doc_offset,
        doc_ids=packed.doc_ids,
        contexts_per_shard=spec.contexts_per_shard,
        storage_dtype=spec.storage_dtype,
    )
    aset.group.attrs["corpus_report"] = report.as_dict()
    return aset, report


@contextmanager
def set_lock(root: Path, set_id: str) -> Iterator[None]:
    """One harvesting process per set: two would be two writers of the same shards.
    flock is released by the kernel when a holder dies, so a crash never leaves it stale."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{set_id}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarvestBusy(
                f"activation set {set_id} is being harvested by another process; wait for it "
                "or cancel its job"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def harvest(
    spec: HarvestSpec,
    *,
    settings: Settings,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> HarvestResult:
    """Run (or resume, or reuse) the harvest this spec describes (run_harvest in
    saefeat/pipeline.py also records the set in the catalog).

    `should_stop` is polled between shards; when it says so, in-flight work is abandoned
    (its shards stay uncommitted) and HarvestCancelled is raised.
    """
    if spec.paired_model is not None:  # its sides are plain specs, each with its own set
        raise SaefeatError("a paired harvest runs each side in turn: "
                           "workers/harvest_job.harvest_and_record")  # fmt: skip
    t0 = time.perf_counter()
    root = settings.activations_dir
    with set_lock(root, spec.set_id()):
        aset, report = prepare_set(spec, root, CorpusRoots.of(settings.corpus_root_paths))
        if aset.status == STATUS_COMPLETE:
            if progress:
                progress(aset.n_tokens, aset.n_tokens)
            return HarvestResult(aset, True, 0, 0.0, report)
        pending = aset.uncommitted_shards()
        run = _ShardRun(spec, aset, settings, progress, should_stop)
        if pending:
            run.run(pending)
        if should_stop and should_stop():
            raise HarvestCancelled("the harvest was cancelled; resubmit it to resume")
        aset.mark_complete(set_statistics(aset), run.skipped)
    return HarvestResult(
        aset,
        False,
        len(pending),
        time.perf_counter() - t0,
        report,
        skipped=run.skipped,
        dropped_contexts=len(aset.dropped_contexts()),
        startup_seconds=run.startup_seconds,
        shard_seconds=run.shard_seconds,
        tokens_run=run.tokens_run,
    )


def _task_error(e: ray.exceptions.RayTaskError) -> BaseException:
    """Our own errors from a worker come back as themselves."""
    if isinstance(e.cause, SaefeatError | ValueError):
        return e.cause
    return e


class _ShardRun:
    """The driver's loop: hands shards to actors, counts deaths per shard, reports."""

    def __init__(
        self,
        spec: HarvestSpec,
        aset: ActivationSet,
        settings: Settings,
        progress: Progress | None,
        should_stop: ShouldStop | None,
    ):
        self.spec, self.aset, self.settings = spec, aset, settings
        self.progress, self.should_stop = progress, should_stop
        self.attempts: dict[int, int] = {}
        self.skipped: dict[int, str] = {}
        self.startup_seconds = self.shard_seconds = 0.0
        self.tokens_run = 0
        self.where: dict[int, tuple[str, int]] = {}  # actor index -> (node id, pid)
        self.group = None  # the placement group holding the workers' places

    def _stopping(self) -> bool:
        return bool(self.should_stop and self.should_stop())

    def _start_workers(self, n_shards: int) -> list:
        ensure_ray(self.settings)
        n_gpus = gpus_available()
        device = pick_device(self.spec.device, n_gpus)
        default_workers = max(1, n_gpus) if on_gpu(device) else 1
        n_workers = min(self.spec.workers or default_workers, n_shards)
        threads = task_cpus(n_workers)
        # num_cpus 0 on a GPU: the actor must fit its GPU-only bundle below.
        options = {"num_gpus": 1, "num_cpus": 0} if on_gpu(device) else {"num_cpus": threads}
        if not self.settings.ray_address:  # our own Ray: what it has is all it will have
            _check_fits(options, n_workers)
        # All of a harvest's workers are placed at once or none is (a placement group):
        # two harvests that each got some of theirs would wait for each other forever.
        bundle = {"GPU": 1} if on_gpu(device) else {"CPU": threads}
        self.group = placement_group([bundle] * n_workers, strategy="SPREAD")
        args = (self.spec.model_dump_json(), str(self.aset.path), device, threads)
        workers: list = []
        try:
            self._wait_for_room(options, n_workers)
            workers = [HarvestWorker.options(**options, scheduling_strategy=(
                PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i)
            )).remote(*args) for i in range(n_workers)]  # fmt: skip
            self._wait_until_up(workers, options)
        except BaseException:
            self._stop_workers(workers)
            raise
        return workers

    def _wait_for_room(self, options: dict, n_workers: int) -> None:
        """Until the cluster holds a place for every worker; a cancel stops the wait.
        Busy means wait: while the cluster's totals can hold the workers, other jobs only
        hold them now and the wait has no bound; otherwise (a cluster that may grow a
        node that fits) settings.schedule_timeout_s bounds it."""
        limit = self.settings.schedule_timeout_s
        deadline = math.inf if _fits_in_all(options, n_workers) else time.monotonic() + limit
        ready = self.group.ready()
        while not ray.wait([ready], timeout=0.5)[0]:
            self._go_on_waiting(deadline, lambda: (
                f"harvest workers were not up within {limit:.0f}s "
                f"(SAEFEAT_SCHEDULE_TIMEOUT_S): {n_workers} wait for {options} each; "
                f"the cluster has {_resources()}"))  # fmt: skip

    def _go_on_waiting(self, deadline: float, late: Callable[[], str]) -> None:
        """Raise if the harvest was cancelled, or with `late()` past the deadline."""
        if self._stopping():
            raise HarvestCancelled("the harvest was cancelled; resubmit it to resume")
        if time.monotonic() > deadline:
            raise SaefeatError(late())

    def _wait_until_up(self, workers: list, options: dict) -> None:
        """Until every placed actor has loaded the model, within settings.
        schedule_timeout_s; a cancel stops the wait."""
        limit = self.settings.schedule_timeout_s
        deadline = time.monotonic() + limit
        refs = {w.where.remote(): i for i, w in enumerate(workers)}
        pending = list(refs)
        while pending:
            self._go_on_waiting(deadline, lambda left=len(pending): (
                f"harvest workers were placed but not up within {limit:.0f}s "
                f"(SAEFEAT_SCHEDULE_TIMEOUT_S): {left} of {len(workers)} still "
                f"load the model ({options} each)"))  # fmt: skip
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            for ref in done:
                try:
                    self.where[refs[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise _task_error(e) from None
                except ray.exceptions.RayActorError as e:
                    lines = [line for line in str(e).splitlines() if line.strip()]
                    why = lines[-1].strip() if lines else type(e).__name__  # __init__'s error
                    raise SaefeatError(f"harvest workers failed to start: {why}") from None

    def _stop_workers(self, workers: list) -> None:
        """Kill the actors and return only once none of them can write a shard: Ray
        has them dead, and the processes on this machine have exited. ray.kill alone
        does not wait, and a dying actor could still commit a shard that the next run
        is writing (two writers on one shard)."""
        for w in workers:
            ray.kill(w, no_restart=True)
        deadline = time.monotonic() + self.settings.actor_exit_timeout_s
        # Ray's view: a call fails with ActorDiedError once it has the actor dead; one
        # that still answers was sent before the kill landed, so ask again.
        pending = {w.ready.remote(): w for w in workers}
        while pending and time.monotonic() < deadline:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
            for ref in done:
                w = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.ActorDiedError:
                    continue
                except ray.exceptions.RayError:
                    pass  # unavailable (restarting, unreachable): not known dead yet
                pending[w.ready.remote()] = w
        here = ray.get_runtime_context().get_node_id()
        pids = [pid for node, pid in self.where.values() if node == here]
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _process_alive(p)]
            if pids:
                time.sleep(0.05)
        if pending or pids:
            log.error("harvest workers still alive %.0fs after ray.kill: %d actor(s), pids %s",
                      self.settings.actor_exit_timeout_s, len(pending), pids)  # fmt: skip
        if self.group is not None:  # their places go back to the cluster
            remove_placement_group(self.group)
            self.group = None

    def _report(self, done: int) -> None:
        if self.progress:
            self.progress(done, self.aset.n_tokens)

    def _one_worker_here(self, n_shards: int) -> bool:
        """Inside work_here(), off a cluster, when the harvest would start one worker."""
        if not runs_here(self.settings):
            return False
        import torch

        n_gpus = torch.cuda.device_count()
        device = pick_device(self.spec.device, n_gpus)
        default_workers = max(1, n_gpus) if on_gpu(device) else 1
        return min(self.spec.workers or default_workers, n_shards) == 1

    def _run_here(self, shards: list[int]) -> None:
        """The shards in this process: one harvester, IN_FLIGHT shards at a time."""
        import torch

        t0 = time.perf_counter()
        device = pick_device(self.spec.device, torch.cuda.device_count())
        harvester = ShardHarvester(self.spec.model_dump_json(), str(self.aset.path), device)
        t1 = time.perf_counter()
        self.startup_seconds = t1 - t0
        done = sum(b - a for a, b in map(self.aset.shard_rows, self.aset.committed_shards()))
        self._report(done)
        forwarded = 0  # rows run through the model in shards not committed yet
        lock = threading.Lock()  # the forward thread adds, this one takes the committed off

        def on_rows(n: int) -> None:  # progress within a shard: its forward's batches
            nonlocal forwarded
            with lock:
                forwarded += n
                self._report(min(done + forwarded, self.aset.n_tokens))

        harvester.on_rows = on_rows
        queue, in_flight = list(shards), deque()
        try:
            with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="shard") as pool:
                while queue or in_flight:
                    while queue and len(in_flight) < IN_FLIGHT and not self._stopping():
                        in_flight.append(pool.submit(harvester.harvest_shard, queue.pop(0)))
                    if not in_flight:
                        return  # stopped
                    commit = in_flight.popleft().result()
                    with lock:
                        done += commit["rows"]
                        forwarded -= commit["rows"]
                        self._report(min(done + forwarded, self.aset.n_tokens))
                    self.tokens_run += commit["rows"]
        finally:
            self.shard_seconds = time.perf_counter() - t1

    def run(self, shards: list[int]) -> None:
        if self._one_worker_here(len(shards)):
            self._run_here(shards)
            return
        t0 = time.perf_counter()
        workers = self._start_workers(len(shards))
        t1 = time.perf_counter()
        self.startup_seconds = t1 - t0
        done = sum(self.aset.shard_rows(s)[1] - self.aset.shard_rows(s)[0]
                   for s in self.aset.committed_shards())  # fmt: skip
        self._report(done)
        queue = list(shards)
        suspects: set[int] = set()  # in flight when an actor died: run alone next time
        in_flight: dict = {}  # ref -> (actor index, shard)
        per_actor: dict[int, list[int]] = {i: [] for i in range(len(workers))}
        # An actor that died is restarted by Ray; until its where() answers, tasks sent to
        # it fail at once with ActorUnavailableError, so it gets none.
        probes: dict = {}  # where() ref -> actor index
        down: set[int] = set()

        def submit() -> None:
            for i, w in enumerate(workers):
                while i not in down and queue and len(per_actor[i]) < IN_FLIGHT:
                    if any(s in suspects for s in per_actor[i]):
                        break  # a suspect runs alone
                    shard = queue[0]
                    if shard in suspects and per_actor[i]:
                        break
                    queue.pop(0)
                    in_flight[w.harvest_shard.remote(shard)] = (i, shard)
                    per_actor[i].append(shard)

        def probe(i: int) -> None:
            down.add(i)
            probes[workers[i].where.remote()] = i  # a restarted actor has a new pid

        try:
            submit()
            while in_flight or probes:
                if self._stopping():
                    return
                ready, _ = ray.wait([*in_flight, *probes], num_returns=1, timeout=0.5)
                if not ready:
                    continue
                ref = ready[0]
                if ref in probes:
                    i = probes.pop(ref)
                    try:
                        self.where[i] = ray.get(ref)
                        down.discard(i)
                    except ray.exceptions.RayActorError:
                        time.sleep(0.2)  # still restarting
                        probe(i)
                    submit()
                    continue
                i, shard = in_flight.pop(ref)
                per_actor[i].remove(shard)
                try:
                    commit = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise _task_error(e) from None
                except ray.exceptions.RayActorError as e:
                    # Unavailable or died: either way this actor was ready when the shard
                    # was sent, so its process died holding it.
                    self._worker_died(shard, e, queue, suspects)
                    if i not in down:
                        probe(i)
                else:
                    suspects.discard(shard)
                    done += commit["rows"]
                    self.tokens_run += commit["rows"]
                    self._report(done)
                submit()
        finally:
            self.shard_seconds = time.perf_counter() - t1
            # Also stops a running shard on cancel: it stays uncommitted.
            self._stop_workers(workers)

    def _worker_died(self, shard: int, e: Exception, queue: list[int], suspects: set[int]):
        n = self.attempts[shard] = self.attempts.get(shard, 0) + 1
        if n >= self.spec.max_shard_attempts:
            self.skipped[shard] = (
                f"its worker process died on all {n} attempts; skipped "
                f"(last error: {type(e).__name__})"
            )
            suspects.discard(shard)
            return
        suspects.add(shard)
        queue.insert(0, shard)
