"""A client for a remote saefeat server: submit jobs, list them, follow them live.

The CLI uses it when given `--server URL` (or SAEFEAT_SERVER), with the key from `--key`
(or SAEFEAT_API_KEY), so a user submits work to a cluster without a shell on it. A
refusal from the server (problem+json) becomes a SaefeatError carrying its detail.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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


def _describe(job: dict) -> str:
    what = f"{job['kind']} {job['id'][:8]} {job['status']}"
    for s in job.get("stages") or []:
        what += f" | {s['stage']}: {s['status']}"
    return what


def watch(remote: Remote, job_ids: list[str] | None, console: Console, every: float = 1.0):
    """A live progress bar per job until every one has finished; `job_ids` None: the
    jobs active now. Returns the jobs as they ended."""
    if job_ids is None:
        job_ids = [j["id"] for j in remote.jobs(200) if j["status"] in ACTIVE]
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"), TimeRemainingColumn(),
                    console=console)  # fmt: skip
    tasks: dict[str, Any] = {}
    with bars:
        while True:
            jobs = [remote.job(i) for i in job_ids]
            for job in jobs:
                if job["id"] not in tasks:
                    tasks[job["id"]] = bars.add_task(_describe(job), total=None,
                                                     unit=job.get("unit", ""))  # fmt: skip
                bars.update(tasks[job["id"]], description=_describe(job),
                            completed=job["progress_done"],
                            total=job["progress_total"])  # fmt: skip
            if all(j["status"] not in ACTIVE for j in jobs):
                return jobs
            time.sleep(every)
