"""A synthetic FeatureIndex, so the catalog, the API and the pages can be tried (and tested)
without a model, a GPU or a harvest. Seeded, so the same call gives the same data."""

from __future__ import annotations

from typing import Any

import numpy as np

from saefeat.features.records import FeatureExample, FeatureIndex, VocabProjection
from saefeat.storage.catalog.models import SAE
from saefeat.storage.catalog.registry import register_sae

# Byte-level BPE ("Ġ" = leading space), SentencePiece ("▁") and decoded (" ") spellings
# all appear, as they do across real tokenizers.
WORDS = [
    "the", "cat", "dog", "river", "python", "import", "class", "def", "return", "loop",
    "error", "value", "list", "dict", "string", "file", "open", "read", "write", "data",
    "model", "token", "layer", "feature", "sparse", "dense", "matrix", "vector", "sum", "mean",
]  # fmt: skip
SPELLINGS = ("{}", " {}", "Ġ{}", "▁{}")


def register_test_sae(session: Any, sae_id: str = "sae-a", d_sae: int = 64, **fields) -> SAE:
    """An SAE row as if trained on SmolLM2's layer-6 residual stream (TopK, fewer active
    latents than latents); `fields` override any of register_sae's. The caller commits."""
    values = {
        "name": f"test {sae_id}",
        "model_name": "SmolLM2-135M-Instruct",
        "hook_name": "blocks.6.hook_resid_post",
        "architecture": "topk",
        "d_in": 576,
        "k": min(8, d_sae - 1),
        "metrics": {"fvu": 0.2, "l0": 8.0},
    }
    return register_sae(session, sae_id=sae_id, d_sae=d_sae, **(values | fields))


def synthetic_vocab() -> list[str]:
    return [form.format(word) for word in WORDS for form in SPELLINGS]


def synthetic_feature_index(
    d_sae: int = 64,
    *,
    n_examples: int = 5,
    n_quantile: int = 0,
    window: int = 9,
    n_vocab: int = 8,
    n_bins: int = 10,
    n_neighbours: int = 10,
    dead_fraction: float = 0.1,
    seed: int = 0,
) -> FeatureIndex:
    """Random but plausible statistics, examples and projections for `d_sae` features."""
    rng = np.random.default_rng(seed)
    vocab = synthetic_vocab()
    density = rng.beta(0.5, 20.0, size=d_sae)
    density[rng.random(d_sae) < dead_fraction] = 0.0
    # Ties in the sort columns exercise the cursor's tie-break on index.
    density = np.round(density, 3)
    max_act = np.where(density > 0, np.round(rng.gamma(2.0, 3.0, size=d_sae), 2), 0.0)
    mean_act = np.where(density > 0, max_act * rng.uniform(0.1, 0.5, size=d_sae), np.nan)
    edges = np.geomspace(1e-3, 100.0, n_bins + 1)
    histograms = rng.integers(0, 1000, size=(d_sae, n_bins)) * (density > 0)[:, None]

    examples: list[FeatureExample] = []
    projections: list[VocabProjection] = []
    for f in range(d_sae):
        kinds = [("top", n_examples)] + [("quantile", n_quantile)]
        for kind, count in kinds:
            for rank in range(count if density[f] > 0 else 0):
                ids = rng.integers(0, len(vocab), size=window)
                values = np.round(rng.random(window) * max_act[f], 4)
                focus = int(rng.integers(0, window))
                peak = float(max_act[f] * (1.0 - rank / (2 * count)))
                values[focus] = peak
                examples.append(
                    FeatureExample(
                        feature_index=f,
                        rank=rank,
                        activation=peak,
                        context_index=int(rng.integers(0, 10_000)),
                        position=int(rng.integers(0, 128)),
                        token_ids=ids.tolist(),
                        token_strs=[vocab[i] for i in ids],
                        values=values.tolist(),
                        focus=focus,
                        kind=kind,
                    )
                )
        picks = rng.choice(len(vocab), size=2 * n_vocab, replace=False)
        top, bottom = picks[:n_vocab], picks[n_vocab:]
        top_values = np.sort(rng.uniform(0.5, 3.0, size=n_vocab))[::-1]
        bottom_values = np.sort(rng.uniform(-3.0, -0.5, size=n_vocab))
        projections.append(
            VocabProjection(
                feature_index=f,
                top_ids=top.tolist(),
                top_strs=[vocab[i] for i in top],
                top_values=np.round(top_values, 4).tolist(),
                bottom_ids=bottom.tolist(),
                bottom_strs=[vocab[i] for i in bottom],
                bottom_values=np.round(bottom_values, 4).tolist(),
            )
        )
    # Random distinct neighbours other than the feature itself, with falling cosines.
    n_near = min(n_neighbours, d_sae - 1)
    # Strictly increasing offsets in 1..d_sae-1 (O(d_sae * n), fine for a million features).
    step = max((d_sae - 1) // max(n_near, 1), 1)
    shift = np.cumsum(rng.integers(1, step + 1, size=(d_sae, n_near)), axis=1)
    near = (np.arange(d_sae)[:, None] + shift) % d_sae
    cosines = np.round(np.sort(rng.uniform(0.1, 0.9, size=(d_sae, n_near)), axis=1)[:, ::-1], 4)
    return FeatureIndex(
        d_sae=d_sae, n_tokens=100_000, density=density, max_activation=max_act,
        mean_activation=mean_act, examples=examples, projections=projections,
        histogram_edges=edges, histograms=histograms, neighbour_indices=near,
        neighbour_cosines=cosines,
    )  # fmt: skip


def synthetic_effects(index: FeatureIndex, n: int = 6, seed: int = 0) -> FeatureIndex:
    """`index` with token effects (features/effects.py): a de-biased ranking for every
    feature, a measured one for each feature that fired (density > 0)."""
    from saefeat.features.records import TokenEffects

    rng = np.random.default_rng(seed)
    vocab = synthetic_vocab()
    effects = []
    for f in range(index.d_sae):
        for method in ("measured", "debiased"):
            if method == "measured" and index.density[f] == 0:
                continue
            picks = rng.choice(len(vocab), size=2 * n, replace=False)
            up = np.round(np.sort(rng.uniform(0.1, 4.0, size=n))[::-1], 4)
            down = np.round(np.sort(rng.uniform(-4.0, -0.1, size=n)), 4)
            effects.append(
                TokenEffects(
                    feature_index=f,
                    method=method,  # type: ignore[arg-type]
                    up_ids=picks[:n].tolist(),
                    up_strs=[vocab[i] for i in picks[:n]],
                    up_values=up.tolist(),
                    down_ids=picks[n:].tolist(),
                    down_strs=[vocab[i] for i in picks[n:]],
                    down_values=down.tolist(),
                )
            )
    index.effects = effects
    return index
