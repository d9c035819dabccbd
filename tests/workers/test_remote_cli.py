"""`saefeat --server URL ...` against a real server (uvicorn in a thread): a refused spec
is one line naming the field with exit 2, the job list and --watch read the server."""

from __future__ import annotations

import json
import threading
import time

import pytest
from typer.testing import CliRunner

from saefeat.cli import app as cli

KEY = "sk-remote-cli-test"


@pytest.fixture
def server(settings):
    import socket

    import uvicorn

    from saefeat.api.app import create_app
    from saefeat.storage.catalog.models import Job

    app = create_app(settings.model_copy(update={"bootstrap_api_key": KEY}))
    with app.state.sessionmaker() as s:
        s.add(Job(id="done1", kind="harvest", spec={}, spec_hash="as-x", status="succeeded",
                  progress_done=10, progress_total=10))  # fmt: skip
        s.commit()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        assert thread.is_alive()
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_remote_submit_jobs_and_watch(server):
    runner = CliRunner()
    env = {"SAEFEAT_SERVER": server, "SAEFEAT_API_KEY": KEY, "COLUMNS": "200"}
    bad = runner.invoke(cli, ["submit", "index", json.dumps({"sae": "sae-none"})], env=env)
    assert bad.exit_code == 2 and "sae-none" in bad.output and "422" in bad.output
    unknown = runner.invoke(cli, ["submit", "pipeline", '{"stages": ["nope"]}'], env=env)
    assert unknown.exit_code == 2 and "stages.0" in unknown.output
    weak = runner.invoke(cli, ["--key", "sk-wrong", "jobs"], env=env)
    assert weak.exit_code == 2 and "401" in weak.output
    listed = runner.invoke(cli, ["jobs"], env=env)
    assert listed.exit_code == 0 and "done1" in listed.output and "10/10" in listed.output

    from rich.console import Console

    from saefeat.remote import Remote, watch

    jobs = watch(Remote(server, KEY), ["done1"], Console(file=open("/dev/null", "w")))  # noqa: SIM115
    assert [j["status"] for j in jobs] == ["succeeded"]


def test_work_command_with_a_server_is_refused_there(server):
    """`saefeat index --server URL`: the spec goes to the server, which refuses it."""
    env = {"SAEFEAT_SERVER": server, "SAEFEAT_API_KEY": KEY}
    out = CliRunner().invoke(cli, ["index", "--sae", "sae-none"], env=env)
    assert out.exit_code == 2 and "sae-none" in out.output and "422" in out.output


def test_jobs_watch_follows_this_catalogs_jobs(settings):
    """Without a server, --watch follows the local catalog's active jobs (the CLI's own
    runs are rows there): a plain line per change when the output is not a terminal."""
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.models import Job

    with catalog_session(settings) as s:
        s.add(Job(id="abcdef0123", kind="index", spec={}, spec_hash="x", status="running",
                  progress_done=10, progress_total=40, rate=5.0))  # fmt: skip
        s.commit()

    def finish() -> None:
        time.sleep(1.5)
        with catalog_session(settings) as s:
            job = s.get(Job, "abcdef0123")
            job.progress_done, job.status = 40, "succeeded"
            s.commit()

    thread = threading.Thread(target=finish)
    thread.start()
    out = CliRunner().invoke(cli, ["jobs", "--watch"], env={"SAEFEAT_SERVER": ""})
    thread.join()
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("index abcdef01 running: 10/40 batches (25%), 5.0 batches/s"), lines
    assert lines[-1].startswith("index abcdef01 succeeded: 40/40 batches (100%)"), lines
