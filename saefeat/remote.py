"""A client for a remote saefeat server: submit jobs, list them, follow them live.

The CLI uses it when given `--server URL` (or SAEFEAT_SERVER), with the key from `--key`
(or SAEFEAT_API_KEY), so a user submits work to a cluster without a shell on it. A
refusal from the server (problem+json) becomes a SaefeatError carrying its detail.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console

from saefeat.errors import SaefeatError
from saefeat.storage.catalog.job_status import ACTIVE


def submit_path(kind: str, spec: dict) -> tuple[str, dict]:
    """(the path a kind's spec is POSTed to, the body): the kind's route in the registry,
    with the fields its path holds (an explain's SAE) moved from the body into it."""
    from saefeat.workers.job_kinds import job_kinds

    known = job_kinds()
    if kind not in known:
        raise SaefeatError(f"{kind!r} is not a job kind; use one of {sorted(known)}",
                           field="kind")  # fmt: skip
    route, body = known[kind].route, dict(spec)
    path = {}
    for name, field in route.path_fields.items():
        if not isinstance(body.get(field), str):
            raise SaefeatError(f"a {kind} spec needs `{field}`", field=field)
        path[name] = quote(body.pop(field), safe="")
    return "/v1" + route.path.format(**path), body


class RemoteError(SaefeatError):
    """The server refused the request, or could not be reached."""


class Remote:
    def __init__(self, url: str, key: str | None = None, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kw) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise RemoteError(f"cannot reach {self.http.base_url}: {e}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail") or r.text
            except ValueError:
                detail = r.text
            raise RemoteError(f"the server answered {r.status_code}: {detail}")
        return r.json()

    def submit(self, kind: str, spec: dict, idempotency_key: str | None = None) -> dict:
        """POST the spec; a retry with the same key answers the same job."""
        path, body = submit_path(kind, spec)
        key = idempotency_key or uuid.uuid4().hex
        return self._call("POST", path, json=body, headers={"Idempotency-Key": key})

    def jobs(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/v1/jobs", params={"limit": limit})["items"]

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")


def stages_text(job: dict) -> str:
    """A pipeline's chain: `harvest: succeeded | train: running | ...`."""
    return " | ".join(f"{s['stage']}: {s['status']}" for s in job.get("stages") or [])


def watch(
    remote: Remote | Callable[[str], dict],
    job_ids: list[str] | None,
    console: Console,
    every: float = 1.0,
    active: Callable[[], list[str]] | None = None,
) -> list[dict]:
    """Follow jobs until every one has finished (saefeat/cli/progress.py draws them: a
    line each on a terminal, fitted to its width; otherwise a plain line per change);
    `job_ids` None: the jobs active now. `remote`: a server, or a function reading one
    job (the local catalog's). Returns the jobs as they ended."""
    from saefeat.cli.progress import ProgressView, wall_time

    read = remote.job if isinstance(remote, Remote) else remote
    if job_ids is None:
        job_ids = active() if active else [j["id"] for j in remote.jobs(200)
                                           if j["status"] in ACTIVE]  # fmt: skip
    if not job_ids:
        console.print("no active jobs", highlight=False)
        return []
    with ProgressView(console, every=0) as view:
        while True:
            jobs = [read(i) for i in job_ids]
            for job in jobs:
                if job["id"] not in view.steps:
                    label, since = f"{job['kind']} {job['id'][:8]}", job.get("created_at")
                    view.add(job["id"], label, job.get("unit", ""), status=job["status"],
                             started=wall_time(since), show=False)  # fmt: skip
                ended = job["status"] not in ACTIVE
                view.update(job["id"], done=job["progress_done"], total=job["progress_total"],
                            status=job["status"], note=stages_text(job), rate=job.get("rate"),
                            eta=job.get("eta_seconds"), show=not ended)  # fmt: skip
                if ended:  # its clock stops at its row's last update
                    view.finish(job["id"], job["status"], wall_time(job.get("updated_at")))
            if all(j["status"] not in ACTIVE for j in jobs):
                return jobs
            time.sleep(every)
