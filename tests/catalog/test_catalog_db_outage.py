"""The catalog's PostgreSQL going away while people write labels and a job runs
(issue 27): clients get 503 with Retry-After, never a 500; every acknowledged write is
there afterwards; the server and the running job carry on by themselves once it is back.

The outage is real: the server reaches the real PostgreSQL through a TCP proxy that the
test cuts (every connection dropped, new ones refused) and restores, which is what a
stopped database or a lost network looks like from the server, without stopping the
cluster other tests share.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from synthetic_catalog import synthetic_feature_index

from saefeat.api.app import create_app
from saefeat.config import Settings
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.storage.catalog.keys import create_api_key
from saefeat.storage.catalog.models import Label
from saefeat.storage.catalog.writer import write_feature_index
from saefeat.workers.job_kinds import JobKind, JobOutcome, Route, register_job_kind

OUTAGE_S = 8.0


class CuttableProxy:
    """Forwards 127.0.0.1:port to the database; `cut()` drops every connection and
    refuses new ones until `restore()`."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.open.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.server.close()


class OutageSpec(BaseModel):
    name: str


RELEASE: dict[str, threading.Event] = {}


def run_through(spec: OutageSpec, *, settings, progress, should_stop) -> JobOutcome:
    """Reports progress every 50 ms until the test releases it (after the outage)."""
    done = 0
    while not RELEASE[spec.name].is_set() and done < 100_000:
        if should_stop():
            break
        done += 1
        progress(done, 100_000)
        time.sleep(0.05)
    progress(100_000, 100_000)
    return JobOutcome(JobStatus.SUCCEEDED, None, "done")


register_job_kind(
    JobKind("test-outage", OutageSpec, run_through, Route("/test-outages", "Outage"),
            "steps", spec_hash=lambda s: s.name)
)  # fmt: skip


@pytest.fixture
def proxied(migrated_postgres_url):
    url = make_url(migrated_postgres_url)
    proxy = CuttableProxy(url.port)
    yield migrated_postgres_url, url.set(port=proxy.port).render_as_string(False), proxy
    proxy.close()


@pytest.mark.postgres
def test_clients_get_503_and_nothing_acknowledged_is_lost(proxied, make_sae, tmp_path):
    direct, through_proxy, proxy = proxied
    engine = create_engine(direct)
    from sqlalchemy.orm import Session

    with Session(engine) as s:
        make_sae(s, d_sae=8)
        write_feature_index(s, "sae-a", synthetic_feature_index(8, seed=1))
        key = create_api_key(s, "labeller", ["label", "jobs"])
        s.commit()
    settings = Settings(home=tmp_path, database_url=through_proxy,
                        label_rate_per_minute=100_000, label_burst=100_000)  # fmt: skip
    app = create_app(settings)
    name = uuid.uuid4().hex
    RELEASE[name] = threading.Event()
    statuses: list[tuple[str, int, str | None]] = []
    stop = threading.Event()
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        runner = app.state.job_runner
        job = runner.submit_and_start(OutageSpec(name=name))

        def burst() -> None:
            i = 0
            while not stop.is_set():
                text = f"label {i}"
                r = client.post("/v1/saes/sae-a/features/1/labels", json={"text": text})
                statuses.append((text, r.status_code, r.headers.get("Retry-After")))
                if r.status_code >= 500 and r.status_code != 503:
                    return
                i += 1
                time.sleep(0.02)

        writer = threading.Thread(target=burst)
        writer.start()
        time.sleep(1.0)
        proxy.cut()
        during = []
        t_end = time.monotonic() + OUTAGE_S
        while time.monotonic() < t_end:
            for path in ("/v1/health", "/v1/saes/sae-a/features/1", f"/v1/jobs/{job.id}"):
                r = client.get(path)
                during.append((path, r.status_code))
            time.sleep(0.3)
        proxy.restore()
        time.sleep(2.0)  # writes go on after it is back
        RELEASE[name].set()
        ended = runner.wait(job.id, timeout=120)
        stop.set()
        writer.join(30)
        after = client.get("/v1/health")

    codes = [c for _, c, _ in statuses]
    assert set(codes) <= {201, 503}, [s for s in statuses if s[1] not in (201, 503)]
    assert 503 in codes and codes[-1] == 201, codes  # it was down, then it came back
    assert all(ra == "5" for _, c, ra in statuses if c == 503)
    assert {c for _, c in during} <= {200, 503} and (("/v1/health", 503) in during), during
    assert after.status_code == 200

    with Session(engine) as s:
        stored = set(s.scalars(select(Label.text)))
    acknowledged = {text for text, c, _ in statuses if c == 201}
    assert acknowledged <= stored, sorted(acknowledged - stored)[:5]

    assert ended.status == "succeeded", ended.error
    assert ended.progress_done == ended.progress_total == 100_000
    engine.dispose()
    app.state.engine.dispose()


def test_a_wrong_query_is_not_an_outage(db_url):
    """A bad query is the server's bug (500), not the database gone (503, try again):
    on SQLite both are OperationalError, so the message decides."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from saefeat.storage.catalog.db import database_unreachable, make_engine

    engine = make_engine(db_url)
    for sql in ("selec 1", "SELECT * FROM no_such_table"):
        with engine.connect() as c, pytest.raises(DBAPIError) as err:
            c.execute(text(sql))
        assert not database_unreachable(err.value), sql
    engine.dispose()
