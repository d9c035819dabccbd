"""The SAE page's map as inline SVG: one point per feature at its UMAP coordinates, each a
link to its feature page, coloured by firing density or by its label's score.

No script is needed to read or follow it: every point is an `<a>` around a `<circle>`
with a `<title>` (index, density, label). Each circle carries two classes, its density
bin (`d0`..`d7`, `dz` never fired) and its score bin (`s0`..`s7`, `sn` not scored); the
SVG's class (`by-density` or `by-score`) picks which the stylesheet colours, and
static/map.js only switches that class. Nothing is loaded from outside the server.
"""

from __future__ import annotations

import math

from markupsafe import Markup, escape

from saefeat.storage.catalog.feature_map import FeatureMap

N_BINS = 8
# Viridis at 8 stops: dark = rare / low score, yellow = frequent / high score.
PALETTE = ("#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39",
           "#fde725")  # fmt: skip
NONE_COLOUR = "#c8c8c8"
STYLE = "\n".join(
    [f"svg.by-density .d{i}, svg.by-score .s{i} {{ fill: {c}; }}" for i, c in enumerate(PALETTE)]
    + [f"svg.by-density .dz, svg.by-score .sn {{ fill: {NONE_COLOUR}; }}",
       "svg.feature-map circle { fill-opacity: 0.8; }",
       "svg.by-score circle:not(.sn) { r: 4px; }",  # the few scored points stand out
       "svg.feature-map a:hover circle { stroke: #000; stroke-width: 1.5; fill-opacity: 1; }",
       "svg.feature-map rect.frame { fill: #fff; stroke: #ddd; }",
       ".map-legend i.swatch { display: inline-block; width: 1.2em; height: 0.8em; }",
       ".map-legend [hidden] { display: none; }"]
)  # fmt: skip


def _bin(value: float, lo: float, hi: float) -> int:
    if hi <= lo:
        return N_BINS - 1
    return min(int((value - lo) / (hi - lo) * N_BINS), N_BINS - 1)


def density_range(fmap: FeatureMap) -> tuple[float, float]:
    """log10 density of the rarest and the most frequent feature that fired."""
    logs = [math.log10(p.density) for p in fmap.points if p.density > 0]
    return (min(logs), max(logs)) if logs else (0.0, 0.0)


def map_svg(sae_id: str, fmap: FeatureMap, *, width: int = 640, height: int = 480,
            radius: float = 2.5) -> Markup | None:  # fmt: skip
    """The map, or None when no feature has coordinates (indexed before the map)."""
    if not fmap.points:
        return None
    xs, ys = [p.x for p in fmap.points], [p.y for p in fmap.points]
    pad = 8
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 2 * pad) / ((x1 - x0) or 1.0)
    sy = (height - 2 * pad) / ((y1 - y0) or 1.0)
    lo, hi = density_range(fmap)
    base = f"/saes/{escape(sae_id)}"
    parts = [f'<svg id="feature-map" class="feature-map by-density" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" '
             'xmlns="http://www.w3.org/2000/svg">',
             "<title>features placed by UMAP of their decoder directions</title>",
             f'<rect class="frame" x="0" y="0" width="{width}" height="{height}"/>']  # fmt: skip
    for p in fmap.points:
        cx = pad + (p.x - x0) * sx
        cy = height - pad - (p.y - y0) * sy  # y up, as UMAP plots are read
        d = f"d{_bin(math.log10(p.density), lo, hi)}" if p.density > 0 else "dz"
        s = "sn" if p.score is None else f"s{_bin(min(max(p.score, 0.0), 1.0), 0.0, 1.0)}"
        tip = f"#{p.index} · density {p.density:.2%}"
        if p.label:
            tip += f" · {p.label[:80]}"
        if p.score is not None:
            tip += f" · score {p.score:.2f}"
        parts.append(f'<a href="{base}/features/{p.index}"><circle class="{d} {s}" '
                     f'cx="{cx:.1f}" cy="{cy:.1f}" r="{radius}"><title>{escape(tip)}</title>'
                     "</circle></a>")  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))


def legend(fmap: FeatureMap) -> Markup:
    """The colour scale of each colouring, as text and swatches."""
    lo, hi = density_range(fmap)
    swatches = "".join(f'<i class="swatch" style="background:{c}"></i>' for c in PALETTE)
    none = f'<i class="swatch" style="background:{NONE_COLOUR}"></i>'
    return Markup(
        f'<span class="legend-density">density 10<sup>{lo:.1f}</sup> {swatches} '
        f"10<sup>{hi:.1f}</sup> · {none} never fired</span>"
        f'<span class="legend-score" hidden>label score 0 {swatches} 1 · {none} '
        "no scored label</span>"
    )
