// The jobs page: GET /v1/jobs (no key: the anonymous view) every few seconds, as a table.
"use strict";
(function () {
  const EVERY_MS = 2000;
  const UNITS = { harvest: "tokens", train: "steps", index: "tasks", pipeline: "stages" };

  function cell(row, content, cls) {
    const td = row.insertCell();
    if (content instanceof Node) td.append(content); else td.textContent = content;
    if (cls) td.className = cls;
    return td;
  }

  function progress(job) {
    const span = document.createElement("span");
    const bar = document.createElement("progress");
    if (job.progress_total) { bar.max = job.progress_total; bar.value = job.progress_done; }
    span.append(bar, ` ${job.progress_done.toLocaleString()}/${job.progress_total == null ? "?" : job.progress_total.toLocaleString()} ${UNITS[job.kind] || ""}`);
    return span;
  }

  function stages(job) {
    const span = document.createElement("span");
    for (const s of job.stages || []) {
      const one = document.createElement("span");
      one.className = `stage status-${s.status}`;
      one.textContent = `${s.stage}: ${s.status}` + (s.progress_total ? ` (${Math.round(100 * s.progress_done / s.progress_total)}%)` : "");
      span.append(one, job.stages.at(-1) === s ? "" : "→ ");
    }
    return span;
  }

  async function refresh() {
    const tbody = document.querySelector("#jobs tbody");
    try {
      const r = await fetch("/v1/jobs?limit=100");
      if (!r.ok) throw new Error(`${r.status}`);
      const jobs = (await r.json()).items;
      tbody.replaceChildren();
      if (!jobs.length) cell(tbody.insertRow(), "No jobs yet.", "muted").colSpan = 8;
      for (const job of jobs) {
        const row = tbody.insertRow();
        row.id = `job-${job.id}`;
        const link = document.createElement("a");
        link.href = `/v1/jobs/${job.id}`; link.textContent = job.id.slice(0, 8);
        cell(row, link);
        cell(row, job.kind);
        cell(row, job.status, `status-${job.status}`);
        cell(row, progress(job));
        cell(row, job.rate ? `${job.rate.toPrecision(2)}/s` : "-");
        cell(row, job.eta_seconds == null ? "-" : `${Math.round(job.eta_seconds)} s`);
        cell(row, stages(job));
        cell(row, new Date(job.created_at + (job.created_at.endsWith("Z") ? "" : "Z")).toLocaleString());
      }
    } catch (e) {
      tbody.replaceChildren();
      cell(tbody.insertRow(), `Could not read /v1/jobs: ${e.message}`, "error").colSpan = 8;
    }
  }
  refresh();
  setInterval(refresh, EVERY_MS);
})();
