"""Charts for the pages as SVG rendered here (no script): bars for a histogram with its
axis labels, and a sparkline for a feature's activation histogram. The data is what the
API already serves (an SAE's metrics, a feature's histogram)."""

from __future__ import annotations

import math

from markupsafe import Markup, escape


def bar_chart(counts: list[float], labels: list[str], *, width: int = 640, height: int = 180,
              title: str = "") -> Markup:  # fmt: skip
    """Vertical bars with a count over each and every other label under the axis."""
    n = max(len(counts), 1)
    top, bottom, left = 16, 34, 8
    plot_h, bar_w = height - top - bottom, (width - 2 * left) / n
    peak = max(counts, default=0) or 1
    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>",
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - left}" y2="{top + plot_h}" '
             'stroke="#999"/>']  # fmt: skip
    for i, (c, label) in enumerate(zip(counts, labels, strict=True)):
        h = plot_h * c / peak
        x = left + i * bar_w
        parts.append(f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" '
                     f'height="{h:.1f}"><title>{escape(label)}: {c:g}</title></rect>')  # fmt: skip
        if c:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - h - 3:.1f}" '
                         f'font-size="9" text-anchor="middle">{c:g}</text>')  # fmt: skip
        if i % 2 == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 14}" '
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
