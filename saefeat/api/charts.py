"""Charts for the pages as SVG rendered here (no script): bars for a histogram with both
axes ticked and labelled, and a sparkline for a feature's activation histogram. The data is what the
API already serves (an SAE's metrics, a feature's histogram)."""

from __future__ import annotations

import math

from markupsafe import Markup, escape


def nice_ticks(peak: float, n: int = 4) -> list[float]:
    """Round values from 0 to at least `peak`, about `n` steps apart (1, 2 or 5 x 10^k)."""
    if peak <= 0:
        return [0.0]
    raw = peak / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(peak / step - 1e-9) + 1)]


def bar_chart(counts: list[float], labels: list[str], *, width: int = 640, height: int = 180,
              title: str = "", y_title: str = "features") -> Markup:  # fmt: skip
    """Vertical bars with a count over each, every other label under the axis, and a y
    axis with round ticks."""
    n = max(len(counts), 1)
    top, bottom, left, right = 16, 34, 44, 8
    plot_h, bar_w = height - top - bottom, (width - left - right) / n
    ticks = nice_ticks(max(counts, default=0))
    peak = ticks[-1] or 1
    base = top + plot_h
    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>",
             f'<line class="axis x-axis" x1="{left}" y1="{base}" x2="{width - right}" '
             f'y2="{base}" stroke="#999"/>',
             f'<line class="axis y-axis" x1="{left}" y1="{top}" x2="{left}" y2="{base}" '
             'stroke="#999"/>',
             f'<text class="axis-title" x="10" y="{top + plot_h / 2:.1f}" font-size="9" '
             f'text-anchor="middle" fill="#555" transform="rotate(-90 10 {top + plot_h / 2:.1f})">'
             f"{escape(y_title)}</text>"]  # fmt: skip
    for t in ticks:
        y = base - plot_h * t / peak
        parts.append(f'<line class="tick y-tick" x1="{left - 4}" y1="{y:.1f}" x2="{left}" '
                     f'y2="{y:.1f}" stroke="#999"/><text class="tick-label" x="{left - 6}" '
                     f'y="{y + 3:.1f}" font-size="9" text-anchor="end" fill="#555">'
                     f"{t:g}</text>")  # fmt: skip
    for i, (c, label) in enumerate(zip(counts, labels, strict=True)):
        h = plot_h * c / peak
        x = left + i * bar_w
        parts.append(f'<rect x="{x + 1:.1f}" y="{base - h:.1f}" width="{bar_w - 2:.1f}" '
                     f'height="{h:.1f}"><title>{escape(label)}: {c:g}</title></rect>')  # fmt: skip
        if c:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{base - h - 3:.1f}" '
                         f'font-size="9" text-anchor="middle">{c:g}</text>')  # fmt: skip
        if i % 2 == 0:
            parts.append(f'<line class="tick x-tick" x1="{x + bar_w / 2:.1f}" y1="{base}" '
                         f'x2="{x + bar_w / 2:.1f}" y2="{base + 4}" stroke="#999"/>'
                         f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 14}" '
                         'font-size="9" text-anchor="middle" fill="#555">'
                         f"{escape(label)}</text>")  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))


def density_chart(histogram: dict | None) -> Markup | None:
    """The feature-density histogram of an SAE's metrics: bins of log10 density."""
    if not histogram or not histogram.get("counts"):
        return None
    edges, counts = histogram["edges"], histogram["counts"]
    labels = ["dead" if lo == 0 else f"1e{math.log10(hi):.1f}"
              for lo, hi in zip(edges[:-1], edges[1:], strict=True)]  # fmt: skip
    return bar_chart(counts, labels, title="features per log10 firing density")


def sparkline(histogram: dict | None, *, width: int = 120, height: int = 24) -> Markup:
    """A feature's activation histogram as a filled line (log counts, so tails show)."""
    counts = (histogram or {}).get("counts") or []
    if not counts or not any(counts):
        return Markup('<span class="muted">-</span>')
    logs = [math.log1p(c) for c in counts]
    peak, step = max(logs), width / max(len(logs) - 1, 1)
    pts = " ".join(f"{i * step:.1f},{height - 1 - (height - 2) * v / peak:.1f}"
                   for i, v in enumerate(logs))  # fmt: skip
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>activation histogram</title>'
        f'<polygon points="0,{height} {pts} {width},{height}" fill="#f3c27a"/>'
        f'<polyline points="{pts}" fill="none" stroke="#c26d00" stroke-width="1"/></svg>'
    )
