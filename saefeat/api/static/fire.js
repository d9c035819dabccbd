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
    const head = table.insertRow();
    for (const h of ["token", "top features"]) head.append(Object.assign(document.createElement("th"), { textContent: h }));
    for (const t of body.tokens) {
      const row = table.insertRow();
      row.insertCell().textContent = JSON.stringify(t.token);
      const cell = row.insertCell();
      t.features.filter((f) => f.activation > 0).forEach((f, i) => { if (i) cell.append(" "); cell.append(link(saeId, f)); });
    }
  });
})();
