"""`saefeat serve` and `saefeat demo`."""

from __future__ import annotations

import os
import signal
from typing import Annotated

import typer

from saefeat.cli.common import DEFAULT_PORT, console, user_errors
from saefeat.config import get_settings


def register(app: typer.Typer) -> None:
    app.command()(user_errors(serve))
    app.command()(user_errors(demo))


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    workers: Annotated[
        int, typer.Option(min=1, help="processes; one per core serves the most requests")
    ] = 1,
):
    """Serve the API and the feature pages."""
    import uvicorn

    from saefeat.api.app import create_app

    settings = get_settings()
    _sigterm_exits()
    console.print(f"serving on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
        return
    # Each worker process builds its own app from the environment; migrate once, first.
    from saefeat.storage.catalog.db import upgrade
    from saefeat.workers.runtime import ensure_ray

    upgrade(settings.db_url)
    # One Ray for all of them, owned by this (the supervising) process's main thread;
    # the workers join it as drivers.
    ensure_ray(settings)
    if not settings.ray_address:
        import ray

        os.environ["SAEFEAT_RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    uvicorn.run("saefeat.api.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level="warning")  # fmt: skip


def _sigterm_exits() -> None:
    """SIGTERM ends the process as Python's exit does, with its exit hooks (Ray's stop).
    After its graceful stop uvicorn raises the signal again under the handler it found;
    Python's default for SIGTERM would end the process at once, and Ray's agents, whose
    raylet stops only in those hooks, would be left running, orphaned."""

    def exit_(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_)


def demo(
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve")] = True,
    tokens: int = 100_000,
    port: int = DEFAULT_PORT,
):
    """harvest -> train -> index -> explain -> serve on SmolLM2-135M and the built-in corpus."""
    from saefeat.cli.explain import do_explain
    from saefeat.cli.harvest import harvest_as_job
    from saefeat.cli.index import do_index
    from saefeat.cli.train import do_train
    from saefeat.demo import print_features, readable_features, run_demo
    from saefeat.specs import ExplainSpec

    sae_id = run_demo(tokens=tokens, harvest=harvest_as_job, train=do_train, index=do_index)
    # The offline explainer and the no-judge scorers label the features it shows.
    do_explain(ExplainSpec(sae=sae_id, features=readable_features(sae_id, n=5)))
    print_features(sae_id, n=5)
    if serve_after:
        serve(port=port)
