"""Listing jobs: newest first, keyset pages that neither skip nor repeat a job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from saefeat.storage.catalog.cursor import InvalidCursorError
from saefeat.storage.catalog.db import make_engine, make_sessionmaker, upgrade
from saefeat.storage.catalog.models import Job
from saefeat.workers.jobs import JobRunner


def test_pages_of_jobs_newest_first(tmp_path, settings):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    # Two jobs share each timestamp: the id breaks the tie.
    with sessions() as s:
        for i in range(7):
            s.add(Job(id=f"job{i}", kind="harvest", spec={}, spec_hash="h", status="succeeded",
                      created_at=t0 + timedelta(seconds=i // 2)))  # fmt: skip
        s.commit()
    runner = JobRunner(settings, sessions)
    seen, cursor = [], None
    while True:
        page, cursor = runner.list(limit=3, cursor=cursor)
        assert len(page) <= 3
        seen += [j.id for j in page]
        if cursor is None:
            break
    expected = sorted((f"job{i}" for i in range(7)), key=lambda j: (int(j[3:]) // 2, j))
    assert seen == expected[::-1]
    with pytest.raises(InvalidCursorError):
        runner.list(limit=3, cursor="not-a-cursor")
