"""The SAE's map: a 2-D UMAP of its decoder directions, one point per feature.

Features whose decoder rows point the same way write the same thing to the residual
stream, so they land together. UMAP (umap-learn) with the cosine metric, seeded
(`random_state`, which also makes it single-threaded), on the rows as they are: cosine
ignores their norms. Its k-nearest-neighbour graph is not searched again: indexing
already ranks every feature's nearest decoder rows by cosine, exactly
(features/neighbours.py), and those are handed to UMAP as `precomputed_knn`, which
skips pynndescent and its numba compilation (the larger part of a first fit's time).

Cost on a 2-core CPU (load ~3; with other jobs at load 14 everything took 4-10x):

    rows x 576           kNN (exact cosine)   layout, fresh process   layout, warm
    4,608 (demo's SAE)   0.4 s                7.2 s                   3.5 s
    20,000 (clustered)   5.9 s                10.8 s                  6.7 s
    100,000 (clustered)  147 s                51 s                    65 s

"Fresh process" includes numba compiling UMAP's layout code (~4 s; umap's functions are
not `cache=True`, so every indexing process pays it once); `import umap` is ~2.6 s. The
kNN is what indexing computes anyway for the stored neighbours (O(d_sae^2 x d_in)); the
layout is O(d_sae x n_neighbours x epochs) (UMAP runs 500 epochs below 10,000 points,
200 above). `IndexSpec.umap=False` skips the map. A dead decoder row (norm 0) has no direction:
it is placed with its nearest live row's coordinates (neighbours of a zero row are
arbitrary), so every feature still gets a finite point.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

N_NEIGHBOURS = 15  # UMAP's default neighbourhood, the point itself included
MIN_DIST = 0.1
SEED = 0


def umap_layout(
    W_dec: torch.Tensor,
    neighbour_indices: np.ndarray | None = None,
    neighbour_cosines: np.ndarray | None = None,
    *,
    n_neighbors: int = N_NEIGHBOURS,
    seed: int = SEED,
) -> np.ndarray:
    """[d_sae, 2] float64 coordinates of the decoder rows `W_dec` [d_sae, d_in], all finite.

    `neighbour_indices`/`neighbour_cosines` [d_sae, >= n_neighbors - 1]: each row's nearest
    other rows by cosine, nearest first (decoder_neighbours'); computed when not given."""
    from saefeat.features.neighbours import decoder_neighbours

    X = W_dec.detach().float().cpu()
    d_sae = X.shape[0]
    if d_sae < 4:  # too few points for a neighbourhood graph: a line by index
        return np.stack([np.arange(d_sae, dtype=np.float64), np.zeros(d_sae)], axis=1)
    k = min(n_neighbors, d_sae - 1)  # self + k - 1 others
    if neighbour_indices is None or neighbour_indices.shape[1] < k - 1:
        near, cos = decoder_neighbours(X, k - 1)
        neighbour_indices, neighbour_cosines = near.numpy(), cos.numpy()
    near = np.asarray(neighbour_indices)[:, : k - 1]
    dist = 1.0 - np.asarray(neighbour_cosines, dtype=np.float32)[:, : k - 1]
    knn_i = np.concatenate([np.arange(d_sae)[:, None], near], axis=1).astype(np.int64)
    knn_d = np.concatenate([np.zeros((d_sae, 1), np.float32), dist], axis=1)
    knn_d = np.clip(knn_d, 0.0, 2.0).astype(np.float32)

    live = X.norm(dim=1) > 0
    xy = _fit(X.numpy(), knn_i, knn_d, k, seed)
    if not bool(live.all()):
        xy = _place_dead(xy, live.numpy(), knn_i)
    if not np.isfinite(xy).all():  # never seen; keep the map honest rather than NaN
        xy = np.nan_to_num(xy, nan=0.0, posinf=0.0, neginf=0.0)
    return xy.astype(np.float64)


def _fit(X: np.ndarray, knn_i: np.ndarray, knn_d: np.ndarray, k: int, seed: int) -> np.ndarray:
    import umap

    with warnings.catch_warnings():
        # "knn_search_index is not an NNDescent object" (we never transform new points),
        # "n_jobs overridden by random_state" (seeded means single-threaded, as asked).
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(
            n_neighbors=k,
            n_components=2,
            metric="cosine",
            min_dist=MIN_DIST,
            random_state=seed,
            n_jobs=1,
            precomputed_knn=(knn_i, knn_d, None),
            # Spectral init needs a connected-enough graph; "random" would not.
            init="spectral",
        )
        return np.asarray(reducer.fit_transform(X), dtype=np.float64)


def _place_dead(xy: np.ndarray, live: np.ndarray, knn_i: np.ndarray) -> np.ndarray:
    out = xy.copy()
    centre = xy[live].mean(axis=0) if live.any() else np.zeros(2)
    for i in np.flatnonzero(~live):
        near = [j for j in knn_i[i, 1:] if j >= 0 and live[j]]
        out[i] = xy[near[0]] if near else centre
    return out
