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


def test_watch_needs_a_server(settings):
    out = CliRunner().invoke(cli, ["jobs", "--watch"], env={"SAEFEAT_SERVER": ""})
    assert out.exit_code == 2 and "--server" in out.output
