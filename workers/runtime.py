"""Connecting to Ray: a cluster at SAEFEAT_RAY_ADDRESS, or a local instance."""

from __future__ import annotations

import os

import ray

from saefeat.config import Settings, get_settings


def ensure_ray(settings: Settings | None = None) -> None:
    """Start or join Ray once per process."""
    if ray.is_initialized():
        return
    settings = settings or get_settings()
    # Our workers import saefeat from the driver's environment; say so for clusters too.
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    if settings.ray_address:
        ray.init(address=settings.ray_address, runtime_env=runtime_env, log_to_driver=False)
        return
    # A local instance listens on loopback only; token auth (on by default since Ray
    # 2.5x) would make every local command manage a token for nothing.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
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


def gpus_available() -> int:
    return int(ray.cluster_resources().get("GPU", 0))
