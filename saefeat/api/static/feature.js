// Draws the data-heavy parts of a feature page from the JSON the server embedded in
// <script id="feature-data">: the examples (each token shaded by its activation over the
// feature's max), the activation histogram (log counts over log-spaced bins) and the
// vocabulary projection. Drawing hundreds of token spans here keeps the server's cost
// per page at one JSON serialisation (bench/catalog.py measures it).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("feature-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 480, HEIGHT = 120;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.assign(node, attrs || {});
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Newlines and tabs would reflow the line; show them as the symbols editors use.
  const visible = (token) => token.replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";

  function drawExamples(container, examples) {
    container.replaceChildren();
    if (!examples.length) {
      container.appendChild(el("p", {className: "muted"}, "none"));
      return;
    }
    for (const example of examples) {
      const top = Math.max(data.max_activation, ...example.values, 1e-12);
      const line = el("div", {className: "example"});
      line.dataset.activation = example.activation;
      example.token_strs.forEach((token, i) => {
        const value = example.values[i];
        const alpha = Math.min(Math.max(value / top, 0), 1);
        const span = el("span", {
          className: i === example.focus ? "tok focus" : "tok",
          title: value.toPrecision(4),
        }, visible(token));
        span.style.background = `rgba(230, 138, 0, ${alpha.toFixed(3)})`;
        line.appendChild(span);
      });
      line.append(" ", el("span", {className: "muted"}, `(${example.activation.toPrecision(3)})`));
      container.appendChild(line);
    }
  }

  function drawHistogram(section, histogram) {
    const counts = histogram ? histogram.counts : [];
    const nonzero = counts.map((c, i) => (c > 0 ? i : -1)).filter((i) => i >= 0);
    if (!nonzero.length) {
      section.appendChild(el("p", {className: "muted"}, "No activations recorded."));
      return;
    }
    // Leading and trailing empty bins only waste width.
    const lo = nonzero[0], hi = nonzero[nonzero.length - 1] + 1;
    const shown = counts.slice(lo, hi);
    const peak = Math.log1p(Math.max(...shown));
    const width = WIDTH / shown.length;
    const svg = document.createElementNS(SVG, "svg");
    svg.id = "histogram";
    for (const [name, value] of [["width", WIDTH], ["height", HEIGHT],
                                 ["viewBox", `0 0 ${WIDTH} ${HEIGHT}`], ["role", "img"],
                                 ["aria-label", "activation histogram"]]) {
      svg.setAttribute(name, value);
    }
    const edges = histogram.edges;
    shown.forEach((count, j) => {
      const height = count ? ((HEIGHT - 4) * Math.log1p(count)) / peak : 0;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", (j * width).toFixed(2));
      rect.setAttribute("y", (HEIGHT - height).toFixed(2));
      rect.setAttribute("width", Math.max(width - 1, 1).toFixed(2));
      rect.setAttribute("height", height.toFixed(2));
      const title = document.createElementNS(SVG, "title");
      const left = edges[lo + j].toPrecision(3), right = edges[lo + j + 1].toPrecision(3);
      title.textContent = `${left} to ${right}: ${count}`;
      rect.appendChild(title);
      svg.appendChild(rect);
    });
    section.appendChild(svg);
    const range = `activation ${edges[lo].toPrecision(3)} to ${edges[hi].toPrecision(3)}`;
    section.appendChild(el("div", {className: "muted"}, `${range} (log-spaced bins, log counts)`));
  }

  function drawProjection(table, tokens) {
    for (const t of tokens) {
      const row = table.insertRow();
      row.insertCell().appendChild(el("code", {}, t.token));
      row.insertCell().textContent = t.value.toFixed(3);
    }
  }

  // The steering form: both continuations of one prompt side by side, the steered one
  // with this feature added or clamped at its strength (POST /v1/saes/{id}/steer).
  function wireSteering(form) {
    if (!form) return;
    const status = document.getElementById("steer-status");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.textContent = "generating…";
      const payload = {
        prompt: document.getElementById("steer-prompt").value,
        method: document.getElementById("steer-method").value,
        features: [{index: Number(form.dataset.index),
                    strength: Number(document.getElementById("steer-strength").value)}],
        max_new_tokens: Number(document.getElementById("steer-tokens").value),
      };
      let response;
      try {
        response = await fetch(form.dataset.url, {
          method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify(payload),
        });
      } catch (err) {
        status.textContent = String(err);
        return;
      }
      const body = await response.json();
      if (!response.ok) { status.textContent = body.detail || response.statusText; return; }
      status.textContent = "done";
      for (const run of ["default", "steered"]) {
        const text = document.getElementById(`steer-${run}`);
        text.replaceChildren(el("span", {className: "muted"}, payload.prompt),
                             el("span", {}, body[run].text));
        const mean = body[run].mean_promoted_logprob[0];
        const tokens = body.promoted[0].tokens.map((t) => JSON.stringify(t)).join(" ");
        document.getElementById(`steer-${run}-lp`).textContent =
          `mean log-prob of ${tokens}: ${mean === null ? "–" : mean.toFixed(2)}`;
      }
      document.getElementById("steer-results").hidden = false;
    });
  }

  const byKind = (kind) => data.examples.filter((e) => e.kind === kind);
  drawExamples(document.getElementById("top-examples"), byKind("top"));
  const quantile = byKind("quantile");
  if (quantile.length) {
    document.getElementById("quantile-section").hidden = false;
    drawExamples(document.getElementById("quantile-examples"), quantile);
  }
  drawHistogram(document.getElementById("histogram-section"), data.histogram);
  drawProjection(document.getElementById("projection-top"), data.projection.top);
  drawProjection(document.getElementById("projection-bottom"), data.projection.bottom);
  wireSteering(document.getElementById("steer-form"));
})();
