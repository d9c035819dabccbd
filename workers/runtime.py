"""Connecting to Ray: a cluster at SAEFEAT_RAY_ADDRESS, or a local instance.

Ray is started or joined once per process, on first use, and lives as long as the
process: the CLI's commands start it when they need it, and the API server when its
first job runs (the job runner asks for it before running any kind), not at start-up. A
local Ray is a dozen processes (GCS, raylet, agents, idle workers); one per API worker
process, started at start-up, took 5-7% of a core and about a tenth of the catalog's read
throughput on a 2-core machine while serving no job (bench/RESULTS.md, catalog).

A thread that is not the main thread never calls ray.init() itself: it hands the start
to a thread of its own (`ray-owner`) that then waits for ever. The reason: the processes
a local ray.init() spawns (GCS, raylet) get a parent-death signal, and on Linux that fires
when the *thread* that spawned them exits, so a Ray started in a job thread died with
the job, and the API process followed a minute later when it lost the GCS.

Work that one process can do runs without Ray inside `work_here()` (the CLI's local
runs: a harvest with one worker, an index on one device), so a small job pays for no
cluster start; on a cluster (SAEFEAT_RAY_ADDRESS) and in the API server it uses Ray.

A local instance listens on 127.0.0.1 only and uses Ray's token auth, with a token in
the data folder (0600), unless RAY_AUTH_MODE is set (the test suite sets `disabled`).
"""

from __future__ import annotations

import contextvars
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from saefeat import sigterm
from saefeat.config import Settings, get_settings

TOKEN_FILE = "ray_auth_token"  # in the data folder; a local Ray's auth token
_start_lock = threading.Lock()  # one start at a time, whichever thread asks


_WORK_HERE = contextvars.ContextVar("saefeat_work_here", default=False)


@contextmanager
def work_here() -> Iterator[None]:
    """Within it (this thread), work that needs one process only runs in this one,
    without Ray: see `runs_here`."""
    token = _WORK_HERE.set(True)
    try:
        yield
    finally:
        _WORK_HERE.reset(token)


def runs_here(settings: Settings) -> bool:
    """Inside `work_here()` and not on a cluster: the work's one worker is this process."""
    return _WORK_HERE.get() and not settings.ray_address


def _local_auth(settings: Settings) -> None:
    """Token auth for a local instance, with a token of our own (not ~/.ray's)."""
    if os.environ.get("RAY_AUTH_MODE") is not None:  # the operator chose; respect it
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        path = settings.home / TOKEN_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    from ray._raylet import Config

    Config.initialize("")  # Ray's C++ config caches RAY_AUTH_MODE from import time


def _loopback_only() -> None:
    """Make the local node's address 127.0.0.1, so every server Ray starts binds there.
    ray.init() turns a `_node_ip_address` of 127.0.0.1 into the host's address on Linux;
    this switch (Ray's own, for single-machine use) keeps the node on loopback. The
    environment variable carries it to the processes Ray starts."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def ensure_ray(settings: Settings | None = None) -> None:
    """Start or join Ray once per process: here from the main thread, from any other
    thread in the process's ray-owner thread (see the module's docstring)."""
    if ray.is_initialized():
        return
    settings = settings or get_settings()
    with _start_lock:
        if ray.is_initialized():
            return
        if threading.current_thread() is threading.main_thread():
            _init_keeping_sigterm(settings)
        else:
            _init_in_owner_thread(settings)


def _init_keeping_sigterm(settings: Settings) -> None:
    # ray.init() sets a SIGTERM handler that kills Ray and exits at once; the server's
    # own (uvicorn's: a graceful stop that hands running jobs back) must stay.
    handler = signal.getsignal(signal.SIGTERM)
    try:
        _init(settings)
    finally:
        sigterm.put_back(handler)


def _init_in_owner_thread(settings: Settings) -> None:
    """Start Ray in a daemon thread that never ends, so the processes it spawns outlive
    the calling thread (a job's). Ray's SIGTERM handler is set all the same: the main
    thread's loop (the server's) puts Python's back."""
    handler = signal.getsignal(signal.SIGTERM)
    failed: list[BaseException] = []
    started = threading.Event()

    def own() -> None:
        try:
            _init(settings)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            failed.append(e)
        finally:
            started.set()
        if not failed:
            threading.Event().wait()  # for the process's life: Ray's processes die with it

    threading.Thread(target=own, name="ray-owner", daemon=True).start()
    started.wait()
    sigterm.put_back(handler)
    if failed:
        raise failed[0]  # as ray.init() raised it in the main thread


def _init(settings: Settings) -> None:
    # Our workers import saefeat from the driver's environment; say so for clusters too.
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    if settings.ray_address:  # RAY_AUTH_MODE / RAY_AUTH_TOKEN come from the environment
        ray.init(address=settings.ray_address, runtime_env=runtime_env, log_to_driver=False)
        return
    _local_auth(settings)
    _loopback_only()
    ray.init(
        # "local": always our own instance, never a stray cluster that `ray start` left
        # in /tmp/ray/ray_current_cluster.
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024**2,
        runtime_env=runtime_env,
    )


def cpus_available() -> int:
    return int(ray.available_resources().get("CPU", 1)) or 1


def largest_node_cpus() -> int:
    """CPUs of the biggest live node: one task or actor can ask for no more than that."""
    sizes = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]]
    return max(sizes, default=1) or 1


def task_cpus(n_tasks: int = 1) -> int:
    """CPUs for each of `n_tasks` tasks sharing what is free, no more than one node has:
    a task asking for more than any node could never be scheduled."""
    return max(1, min(cpus_available() // n_tasks, largest_node_cpus()))


def gpus_available() -> int:
    return int(ray.cluster_resources().get("GPU", 0))
