// "Which features fire on my text": POST /v1/saes/{id}/activations, then the text with
// each token shaded by its strongest feature, and a table of each token's top features
// linked to their pages.
"use strict";
(function () {
  const form = document.getElementById("fire-form");
  if (!form) return;
  const out = document.getElementById("fire-out");
  const table = document.getElementById("fire-table");

  function link(saeId, f) {
    const a = document.createElement("a");
    a.href = `/saes/${encodeURIComponent(saeId)}/features/${f.index}`;
    a.textContent = `#${f.index}`;
    a.title = `activation ${f.activation.toFixed(3)}`;
    return a;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const saeId = document.getElementById("fire-sae").value;
    const text = document.getElementById("fire-text").value;
    out.replaceChildren("Running…");
    table.replaceChildren();
    let body;
    try {
      const r = await fetch(`/v1/saes/${encodeURIComponent(saeId)}/activations`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text, top_n: 3 }),
      });
      body = await r.json();
      if (!r.ok) throw new Error(body.detail || `${r.status}`);
    } catch (e) {
      out.replaceChildren();
      const p = document.createElement("p");
      p.className = "error"; p.id = "fire-error"; p.textContent = e.message;
      out.append(p);
      return;
    }
    const peak = Math.max(1e-9, ...body.tokens.flatMap((t) => t.features.map((f) => f.activation)));
    out.replaceChildren();
    for (const t of body.tokens) {
      const span = document.createElement("span");
      span.className = "tok";
      span.textContent = t.token;
      const top = t.features[0];
      if (top && top.activation > 0) {
        span.style.background = `rgba(230, 138, 0, ${(0.15 + 0.85 * top.activation / peak).toFixed(2)})`;
        span.title = t.features.map((f) => `#${f.index} ${f.activation.toFixed(2)}`).join(", ");
      }
      out.append(span);
    }
    // One row per (token, feature): the feature's activation there and its current label
    // (or its artifact flag), so the table reads without opening each feature's page.
    const head = table.insertRow();
    for (const h of ["token", "feature", "activation", "label"]) head.append(Object.assign(document.createElement("th"), { textContent: h }));
    for (const t of body.tokens) {
      const active = t.features.filter((f) => f.activation > 0);
      active.forEach((f, i) => {
        const row = table.insertRow();
        row.className = "fire-row";
        row.insertCell().textContent = i ? "" : JSON.stringify(t.token);
        row.insertCell().append(link(saeId, f));
        const act = row.insertCell();
        act.className = "fire-activation";
        act.textContent = f.activation.toFixed(3);
        const label = row.insertCell();
        label.className = "fire-label";
        if (f.label) label.textContent = f.label;
        if (f.artifact) label.append(Object.assign(document.createElement("span"), { className: "artifact", textContent: ` artifact: ${f.artifact}` }));
        if (!f.label && !f.artifact) label.append(Object.assign(document.createElement("span"), { className: "muted", textContent: "no label" }));
      });
    }
  });
})();
