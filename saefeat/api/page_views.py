"""What the HTML pages draw, computed in Python so templates stay plain: token colours,
the histogram's SVG geometry, quantile grouping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from saefeat.api.schemas import Example, Histogram

SVG_WIDTH, SVG_HEIGHT = 480, 120


@dataclass
class TokenView:
    text: str
    value: float
    alpha: float  # background opacity, value / the feature's max
    focus: bool


@dataclass
class ExampleView:
    kind: str
    rank: int
    activation: float
    tokens: list[TokenView]


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


def _visible(token: str) -> str:
    # Newlines and tabs would reflow the line; show them as the symbols editors use.
    return token.replace("\n", "↵").replace("\t", "⇥") or "∅"


def example_view(example: Example, max_activation: float) -> ExampleView:
    top = max(max_activation, max(example.values, default=0.0), 1e-12)
    tokens = [
        TokenView(
            text=_visible(text),
            value=value,
            alpha=round(min(max(value / top, 0.0), 1.0), 3),
            focus=i == example.focus,
        )
        for i, (text, value) in enumerate(zip(example.tokens, example.values, strict=True))
    ]
    return ExampleView(example.kind, example.rank, example.activation, tokens)


def histogram_bars(histogram: Histogram | None) -> list[Bar]:
    """Bars on a log-count scale (counts span decades); x is the bin's place in the list,
    which is already log-spaced in activation."""
    if histogram is None or not histogram.counts:
        return []
    counts = histogram.counts
    # Leading and trailing empty bins only waste width.
    nonzero = [i for i, c in enumerate(counts) if c > 0]
    if not nonzero:
        return []
    lo, hi = nonzero[0], nonzero[-1] + 1
    shown = counts[lo:hi]
    peak = math.log1p(max(shown))
    width = SVG_WIDTH / len(shown)
    bars = []
    for j, count in enumerate(shown):
        height = (SVG_HEIGHT - 4) * math.log1p(count) / peak if count else 0.0
        left, right = histogram.edges[lo + j], histogram.edges[lo + j + 1]
        bars.append(
            Bar(
                x=round(j * width, 2),
                y=round(SVG_HEIGHT - height, 2),
                width=round(max(width - 1, 1), 2),
                height=round(height, 2),
                title=f"{left:.3g} to {right:.3g}: {count}",
            )
        )
    return bars


def histogram_range(histogram: Histogram | None) -> tuple[str, str] | None:
    if histogram is None:
        return None
    nonzero = [i for i, c in enumerate(histogram.counts) if c > 0]
    if not nonzero:
        return None
    return f"{histogram.edges[nonzero[0]]:.3g}", f"{histogram.edges[nonzero[-1] + 1]:.3g}"


def page_context(**values: Any) -> dict[str, Any]:
    return {"svg_width": SVG_WIDTH, "svg_height": SVG_HEIGHT, **values}
