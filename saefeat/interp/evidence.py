"""What an explainer sees and what a scorer scores on: token windows of one feature.

The catalog's examples are split by context: the explainer gets the top examples, the
scorers get the quantile samples from other contexts (held out) plus random windows from
the scoring pool (pool.py), so no window used to explain is ever used to score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

N_EXPLAIN = 10  # top examples shown to the explainer (delphi shows 10-40)


@dataclass
class Window:
    tokens: list[str]
    values: list[float]  # the feature's activation on each token
    context_index: int
    kind: str = "top"  # "top", "quantile" or "pool"

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def activation(self) -> float:
        return max(self.values, default=0.0)

    def marked(self, marks: list[bool] | None = None) -> str:
        """The text with the marked tokens (default: those where the feature fires) in
        <<delimiters>>, consecutive ones inside one pair, as delphi's prompts show them."""
        if marks is None:
            marks = [v > 0 for v in self.values]
        out, inside = [], False
        for token, mark in zip(self.tokens, marks, strict=True):
            if mark and not inside:
                out.append("<<")
            if not mark and inside:
                out.append(">>")
            inside = mark
            out.append(token)
        if inside:
            out.append(">>")
        return "".join(out)

    def brief(self) -> dict[str, Any]:
        """What the catalog keeps to show which windows a score rests on."""
        return {"context": self.context_index, "kind": self.kind, "text": self.text[:200]}


def quote(token: str) -> str:
    """A token as people read it in a label: JSON-quoted, so spaces and newlines show."""
    return json.dumps(token, ensure_ascii=False)


@dataclass
class FeatureEvidence:
    index: int  # latent index in the SAE
    feature_id: int  # catalog row id
    density: float
    max_activation: float
    explain: list[Window]
    held_out: list[Window]  # activating windows from contexts the explainer did not see
    # What it makes more likely next, best first: its measured effect (token_effects,
    # `measured`, side up) when indexing stored one, else the vocabulary projection's top.
    promoted: list[str] = field(default_factory=list)
    promoted_source: str = "projection"  # "measured", "debiased" or "projection"

    @property
    def explain_contexts(self) -> set[int]:
        return {w.context_index for w in self.explain}


def split_examples(examples: list[Any], n_explain: int = N_EXPLAIN) -> tuple[list, list]:
    """(explain, held-out) Windows from catalog FeatureExamples: the strongest `n_explain` top
    examples explain; every other example whose context none of them shares is held out."""
    tops = [e for e in examples if e.kind == "top"]
    explain = [_window(e) for e in tops[:n_explain]]
    seen = {w.context_index for w in explain}
    held: list[Window] = []
    for e in examples:
        if e.context_index in seen or e.activation <= 0:
            continue
        seen.add(e.context_index)  # one window per context: no near-duplicates
        held.append(_window(e))
    return explain, held


def _window(e: Any) -> Window:
    return Window(list(e.token_strs), [float(v) for v in e.values], int(e.context_index), e.kind)
