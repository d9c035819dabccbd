// Draws the data-heavy parts of a feature page from the JSON the server embedded in
// <script id="feature-data">: the examples (each token shaded by its activation over the
// feature's max), the activation histogram (log counts over log-spaced bins) and the
// vocabulary projection. Drawing hundreds of token spans here keeps the server's cost
// per page at one JSON serialisation (bench/catalog.py measures it).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("feature-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";

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

  // ---- charts with axes (issue 21): activation histogram, logit histogram ----------
  const CHART = {width: 480, height: 150, left: 44, right: 10, top: 8, bottom: 34};
  const plotW = CHART.width - CHART.left - CHART.right;
  const plotH = CHART.height - CHART.top - CHART.bottom;

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function newChart(id, label) {
    return svgEl("svg", {id, width: CHART.width, height: CHART.height, role: "img",
                         viewBox: `0 0 ${CHART.width} ${CHART.height}`, "aria-label": label});
  }

  // Log-scaled counts: a bar of count c is log1p(c) / log1p(peak) of the plot's height.
  const logHeight = (count, peak) => (count ? (plotH * Math.log1p(count)) / Math.log1p(peak) : 0);

  // Both axes, their ticks (x: [{x, text}] in plot pixels; y: counts at 1, 10, 100, ...) and
  // titles.
  function drawAxes(svg, xTicks, peak, xTitle, yTitle) {
    const x0 = CHART.left, y0 = CHART.top + plotH;
    const axes = svgEl("g", {class: "axes"});
    axes.appendChild(svgEl("line", {class: "axis x-axis", x1: x0, y1: y0, x2: x0 + plotW, y2: y0}));
    axes.appendChild(svgEl("line", {class: "axis y-axis", x1: x0, y1: CHART.top, x2: x0, y2: y0}));
    for (const tick of xTicks) {
      const x = (x0 + tick.x).toFixed(1);
      axes.appendChild(svgEl("line", {class: "tick x-tick", x1: x, y1: y0, x2: x, y2: y0 + 4}));
      axes.appendChild(svgEl("text", {class: "tick-label x-tick-label", x, y: y0 + 14,
                                      "text-anchor": "middle"}, tick.text));
    }
    for (let c = 1; c <= peak; c *= 10) {
      const y = (y0 - logHeight(c, peak)).toFixed(1);
      axes.appendChild(svgEl("line", {class: "tick y-tick", x1: x0 - 4, y1: y, x2: x0, y2: y}));
      axes.appendChild(svgEl("text", {class: "tick-label y-tick-label", x: x0 - 6, y: Number(y) + 3,
                                      "text-anchor": "end"}, c >= 1000 ? `${c / 1000}k` : String(c)));
    }
    axes.appendChild(svgEl("text", {class: "axis-title", x: x0 + plotW / 2, y: CHART.height - 3,
                                    "text-anchor": "middle"}, xTitle));
    axes.appendChild(svgEl("text", {class: "axis-title", x: 10, y: CHART.top + plotH / 2,
                                    "text-anchor": "middle",
                                    transform: `rotate(-90 10 ${CHART.top + plotH / 2})`}, yTitle));
    svg.appendChild(axes);
  }

  function bar(svg, x, width, height, title, cls) {
    const rect = svgEl("rect", {x: (CHART.left + x).toFixed(2),
                                y: (CHART.top + plotH - height).toFixed(2),
                                width: Math.max(width - 1, 1).toFixed(2), height: height.toFixed(2)});
    if (cls) rect.setAttribute("class", cls);
    rect.appendChild(svgEl("title", {}, title));
    svg.appendChild(rect);
  }

  const short = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0)
    ? v.toExponential(0) : String(Number(v.toPrecision(2))));

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
    const peak = Math.max(...shown);
    const width = plotW / shown.length;
    const edges = histogram.edges;
    const svg = newChart("histogram", "activation histogram");
    shown.forEach((count, j) => {
      const left = edges[lo + j].toPrecision(3), right = edges[lo + j + 1].toPrecision(3);
      bar(svg, j * width, width, logHeight(count, peak), `${left} to ${right}: ${count}`);
    });
    // Ticks at the powers of ten among the shown edges (the bins are log-spaced), else at
    // both ends.
    let ticks = [];
    for (let k = lo; k <= hi; k++) {
      const decade = Math.log10(edges[k]);
      if (Math.abs(decade - Math.round(decade)) < 1e-6) ticks.push({x: (k - lo) * width, text: short(edges[k])});
    }
    if (ticks.length < 2) {
      ticks = [{x: 0, text: short(edges[lo])}, {x: plotW, text: short(edges[hi])}];
    }
    drawAxes(svg, ticks, peak, "activation (log-spaced bins)", "tokens");
    section.appendChild(svg);
    // The caption (#histogram-range) is the page's: the drawn bins' range up to the
    // feature's max activation, not the last bin's shared edge (page_routes.py).
  }

  // About five round values between lo and hi.
  function niceTicks(lo, hi) {
    const span = hi - lo || 1;
    const raw = span / 5, mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= 6);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(6)));
    return out;
  }

  // The decoder row's direct-path logits over the whole vocabulary (Neuronpedia's logit
  // histogram): negative bins blue, positive orange, the strongest promoted and
  // suppressed tokens marked at their logits.
  function drawLogits(section, logits, projection) {
    if (!logits || !logits.counts || !logits.counts.length) {
      section.appendChild(el("p", {className: "muted"}, "Not computed for this index (re-index to get it)."));
      return;
    }
    const {min, max, counts} = logits;
    const span = max - min || 1;
    const width = plotW / counts.length;
    const peak = Math.max(...counts, 1);
    const xOf = (v) => ((v - min) / span) * plotW;
    const svg = newChart("logit-histogram", "logit histogram");
    counts.forEach((count, j) => {
      const left = min + (j * span) / counts.length, right = min + ((j + 1) * span) / counts.length;
      bar(svg, j * width, width, logHeight(count, peak),
          `${left.toPrecision(3)} to ${right.toPrecision(3)}: ${count} tokens`,
          right <= 0 ? "neg" : "pos");
    });
    drawAxes(svg, niceTicks(min, max).map((v) => ({x: xOf(v), text: short(v)})), peak,
             "direct-path logit", "tokens");
    for (const [list, cls] of [[projection.top.slice(0, 3), "mark-top"], [projection.bottom.slice(0, 3), "mark-bottom"]]) {
      for (const t of list) {
        const x = (CHART.left + Math.min(Math.max(xOf(t.value), 0), plotW)).toFixed(1);
        const mark = svgEl("line", {class: `logit-mark ${cls}`, x1: x, y1: CHART.top, x2: x, y2: CHART.top + plotH});
        mark.appendChild(svgEl("title", {}, `${JSON.stringify(t.token)}: ${t.value.toFixed(3)}`));
        svg.appendChild(mark);
      }
    }
    section.appendChild(svg);
    const names = (list) => list.slice(0, 3).map((t) => JSON.stringify(t.token)).join(", ");
    section.appendChild(el("div", {className: "muted", id: "logit-ends"},
      `left end: ${names(projection.bottom) || "–"} · right end: ${names(projection.top) || "–"}`));
  }

  // Quantile samples under one heading per activation bin (equal-width slices of
  // (0, max activation], as indexing sampled them), strongest bin first.
  function drawQuantiles(container, examples, histogram) {
    container.replaceChildren();
    const n = (histogram && histogram.quantile_bins) || 10;
    const top = data.max_activation || Math.max(...examples.map((e) => e.activation), 1e-12);
    const bins = new Map();
    for (const e of examples) {
      const k = Math.min(Math.max(Math.floor((e.activation / top) * n), 0), n - 1);
      if (!bins.has(k)) bins.set(k, []);
      bins.get(k).push(e);
    }
    for (const k of [...bins.keys()].sort((a, b) => b - a)) {
      const lo = (k * top) / n, hi = ((k + 1) * top) / n;
      const heading = el("h3", {className: "quantile-bin"},
        `activation ${lo.toPrecision(3)} – ${hi.toPrecision(3)}`);
      heading.appendChild(el("span", {className: "muted"},
        ` (${Math.round((100 * k) / n)}–${Math.round((100 * (k + 1)) / n)}% of max)`));
      heading.dataset.lo = lo; heading.dataset.hi = hi;
      const block = el("div", {className: "quantile-examples"});
      drawExamples(block, bins.get(k));
      container.append(heading, block);
    }
  }

  function drawProjection(table, tokens) {
    for (const t of tokens) {
      const row = table.insertRow();
      row.insertCell().appendChild(el("code", {}, t.token));
      row.insertCell().textContent = t.value.toFixed(3);
    }
  }

  // The effect on the next token (measured, de-biased projection): "none" where the index
  // stored no list (a feature that never fired has no measured effect).
  function drawEffects(effects) {
    for (const method of ["measured", "debiased"]) {
      for (const side of ["up", "down"]) {
        const table = document.getElementById(`effect-${method}-${side}`);
        const tokens = effects && effects[method] ? effects[method][side] : [];
        if (!table) continue;
        if (!tokens.length) {
          table.insertRow().insertCell().appendChild(el("span", {className: "muted"}, "none"));
          continue;
        }
        for (const t of tokens) {
          const row = table.insertRow();
          row.insertCell().appendChild(el("code", {title: JSON.stringify(t.token)}, visible(t.token)));
          // measured: a change in probability, in percentage points; debiased: a z-score.
          const points = 100 * t.value;
          row.insertCell().textContent = method === "debiased" ? t.value.toFixed(2)
            : (points > 0 ? "+" : "") + points.toFixed(1) + " pts";
        }
      }
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
        units: "max_activation",
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
      const applied = body.applied[0];
      status.textContent = `done · ${payload.method} at ${applied.strength} × ${applied.unit.toPrecision(3)}` +
        ` = ${applied.raw_strength.toPrecision(3)}${body.default_cached ? " · default reused" : ""}`;
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
    drawQuantiles(document.getElementById("quantile-examples"), quantile, data.histogram);
  }
  drawHistogram(document.getElementById("histogram-chart"), data.histogram);
  const logitSection = document.getElementById("logit-section");
  if (logitSection) drawLogits(logitSection, data.histogram && data.histogram.logits, data.projection);
  drawProjection(document.getElementById("projection-top"), data.projection.top);
  drawProjection(document.getElementById("projection-bottom"), data.projection.bottom);
  drawEffects(data.effects);
  wireSteering(document.getElementById("steer-form"));
})();
