"""Per-feature statistics and top examples, accumulated with tensor ops on the device.

The SAE's sparse output (vals, idx) for a block of whole contexts goes in; out come
fire counts, activation sums, maxima, log-binned histograms, and each feature's N
strongest examples with the feature's activation on every token of a window around
them, and quantile samples (see quantiles.py). The top-N merge is a segmented sort (by
value, then stably by feature), never a Python loop over features. Accumulators from
different workers merge the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from saefeat.features.distinct import best_per_key, is_peak
from saefeat.features.quantiles import QuantileSampler
from saefeat.features.segments import merge_into_table, segment_top

HIST_EDGES = np.logspace(-4, 3, 57)  # 8 bins a decade over raw activation values
_CANDIDATE_CHUNK = 65536  # window lookups are [chunk, 2w+1]: bound their memory


class BlockLookup:
    """Windows of one feature's activations around given rows of one block.

    The block's sparse entries are sorted feature-major (key = feature * rows + row), so
    one feature's entries over a window of 2w+1 rows are at most 2w+1 consecutive keys:
    a window costs one binary search and one contiguous read, not a search per token."""

    def __init__(self, vals: torch.Tensor, idx: torch.Tensor, ctx_len: int, w: int):
        n_rows = vals.shape[0]
        self.n_rows, self.ctx_len, self.w = n_rows, ctx_len, w
        rows = torch.arange(n_rows, device=vals.device)[:, None]
        keys, order = (idx * n_rows + rows).reshape(-1).sort()
        # Repeated (row, feature) entries (padding) add up, as a dense scatter-add would.
        self.keys, inverse = torch.unique_consecutive(keys, return_inverse=True)
        self.values = torch.zeros(self.keys.numel(), device=vals.device)
        self.values.index_add_(0, inverse, vals.reshape(-1)[order])
        self.span = torch.arange(2 * w + 1, device=vals.device)

    def windows(self, f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """[n, 2w+1]: feature f's activation at each token around row r, same context only."""
        out = [self._chunk(f[i : i + _CANDIDATE_CHUNK], r[i : i + _CANDIDATE_CHUNK])
               for i in range(0, f.numel(), _CANDIDATE_CHUNK)]  # fmt: skip
        if not out:
            return torch.zeros(0, self.span.numel(), device=self.values.device)
        return torch.cat(out)

    def _chunk(self, f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        width = self.span.numel()
        start = f * self.n_rows + r - self.w  # the key of the window's first token
        at = torch.searchsorted(self.keys, start)[:, None] + self.span
        inside = at < self.keys.numel()
        at.clamp_(max=self.keys.numel() - 1)
        offset = self.keys[at] - start[:, None]  # the token each entry falls on, if any
        row = r[:, None] - self.w + offset
        # In the window, and in the same context as r (a key off either end of the block
        # belongs to a neighbouring feature: the row test drops it too).
        hit = inside & (offset >= 0) & (offset < width) & (row >= 0) & (row < self.n_rows)
        hit &= row // self.ctx_len == (r // self.ctx_len)[:, None]
        out = torch.zeros(f.numel(), width, device=f.device)
        values = torch.where(hit, self.values[at], torch.zeros((), device=f.device))
        return out.scatter_add_(1, offset.clamp(0, width - 1), values)


class FeatureAccumulator:
    def __init__(
        self,
        d_sae: int,
        n_top: int,
        window: int,
        device: torch.device | str = "cpu",
        *,
        n_quantile_bins: int = 0,
        per_quantile_bin: int = 0,
        seed: int = 0,
    ):
        self.d_sae, self.n_top, self.window = d_sae, n_top, window
        self.device = torch.device(device)
        dev = self.device
        self.n_tokens = 0
        self.n_excluded = 0  # tokens the token rule left out
        self.fires = torch.zeros(d_sae, dtype=torch.long, device=dev)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        self.act_max = torch.zeros(d_sae, dtype=torch.float32, device=dev)
        self.hist = torch.zeros(d_sae, len(HIST_EDGES) - 1, dtype=torch.long, device=dev)
        self._edges = torch.tensor(HIST_EDGES, dtype=torch.float32, device=dev)
        W = 2 * window + 1
        self.top_vals = torch.full((d_sae, n_top), -float("inf"), device=dev)
        self.top_ctx = torch.full((d_sae, n_top), -1, dtype=torch.long, device=dev)
        self.top_pos = torch.full((d_sae, n_top), -1, dtype=torch.long, device=dev)
        self.top_window = torch.zeros(d_sae, n_top, W, dtype=torch.float32, device=dev)
        # Each held example's window key (features/distinct.py): one window once per feature.
        self.top_key = torch.full((d_sae, n_top), -1, dtype=torch.long, device=dev)
        self.quantiles: QuantileSampler | None = None
        if n_quantile_bins > 0 and per_quantile_bin > 0:
            self.quantiles = QuantileSampler(
                d_sae, n_quantile_bins, per_quantile_bin, W, dev, seed=seed
            )

    @torch.no_grad()
    def add(
        self,
        vals: torch.Tensor,
        idx: torch.Tensor,
        *,
        first_context: int,
        ctx_len: int,
        excluded: torch.Tensor | None = None,
        window_keys: torch.Tensor | None = None,
    ) -> None:
        """Fold in the SAE output of `vals.shape[0] // ctx_len` consecutive whole contexts.

        `excluded`: bool [rows], the tokens the token rule leaves out (storage/exclusion.py);
        None: position 0 only. They count nowhere: no statistic, example or window value.
        `window_keys`: int64 [rows], each token's window key (features/distinct.py); a
        feature's top examples hold one entry per key. None: every token is its own."""
        vals, idx = vals.to(self.device, torch.float32), idx.to(self.device)
        n_rows = vals.shape[0]
        rows = torch.arange(n_rows, device=self.device)
        if excluded is None:
            excluded = rows % ctx_len == 0
        excluded = excluded.to(self.device)
        vals = vals.masked_fill(excluded[:, None], 0.0)
        active = vals > 0
        n_out = int(excluded.sum())
        self.n_tokens += n_rows - n_out
        self.n_excluded += n_out
        f, v = idx[active], vals[active]
        r = rows[:, None].expand_as(idx)[active]
        self.fires.index_add_(0, f, torch.ones_like(f))
        self.act_sum.index_add_(0, f, v.double())
        max_before = self.act_max.clone() if self.quantiles is not None else None
        self.act_max.scatter_reduce_(0, f, v, reduce="amax")
        b = torch.bucketize(v, self._edges).clamp_(1, len(HIST_EDGES) - 1) - 1
        self.hist.view(-1).index_add_(0, f * self.hist.shape[1] + b, torch.ones_like(b))

        lookup = BlockLookup(vals, idx, ctx_len, self.window)
        if self.quantiles is not None:
            self.quantiles.add(
                f,
                v,
                r,
                act_max=self.act_max,
                max_grew=self.act_max > max_before,
                first_context=first_context,
                ctx_len=ctx_len,
                windows=lookup.windows,
            )
        # Only values above the feature's current N-th best can enter its top list.
        keep = v > self.top_vals[f, -1]
        f, v, r = f[keep], v[keep], r[keep]
        if f.numel() == 0:
            return
        # One window once (features/distinct.py): a top example is a peak, no stronger
        # activation of its feature within `window` tokens in its context, so a run of
        # firings shows once; then one candidate per window text (the strongest); then
        # at most N per feature.
        windows = lookup.windows(f, r)
        sel = is_peak(windows, v, self.window).nonzero().squeeze(1)
        f, v, r, windows = f[sel], v[sel], r[sel], windows[sel]
        if window_keys is None:
            key = first_context * ctx_len + r
        else:
            key = window_keys.to(self.device)[r]
        sel = best_per_key(f, key, v)
        sel = sel[segment_top(f[sel], v[sel], self.n_top, self.d_sae)]
        f, v, r, key, windows = f[sel], v[sel], r[sel], key[sel], windows[sel]
        self._merge(f, v, first_context + r // ctx_len, r % ctx_len, windows, key)

    def _merge(self, f, v, ctx, pos, windows, key) -> None:
        """Merge candidates (at most one per feature and key) into the top table, keeping
        one entry per feature and window key: the stronger of a held entry and a
        candidate with its key."""
        held = (self.top_key[f] == key[:, None]) & (self.top_vals[f] > -float("inf"))
        held_value = torch.where(held, self.top_vals[f], -float("inf")).amax(1)
        weaker = held.any(1) & (v <= held_value)
        beaten = held & ~weaker[:, None]  # held entries a stronger candidate replaces
        rows, slots = beaten.nonzero(as_tuple=True)
        self.top_vals[f[rows], slots] = -float("inf")  # empty: the merge's top-k drops it
        new = ~weaker
        f, v, ctx, pos, windows, key = f[new], v[new], ctx[new], pos[new], windows[new], key[new]
        fields = [(self.top_ctx, -1), (self.top_pos, -1), (self.top_window, 0.0),
                  (self.top_key, -1)]  # fmt: skip
        merge_into_table(self.top_vals, fields, f, v, [ctx, pos, windows, key], largest=True)

    @torch.no_grad()
    def merge(self, other: FeatureAccumulator) -> None:
        """Fold another worker's accumulator into this one."""
        other = other.to(self.device)
        self.n_tokens += other.n_tokens
        self.n_excluded += other.n_excluded
        self.fires += other.fires
        self.act_sum += other.act_sum
        self.act_max = torch.maximum(self.act_max, other.act_max)
        self.hist += other.hist
        if self.quantiles is not None and other.quantiles is not None:
            self.quantiles.merge(other.quantiles, self.act_max)
        held = other.top_vals.view(-1) > -float("inf")
        f = torch.arange(self.d_sae, device=self.device).repeat_interleave(self.n_top)[held]
        self._merge(
            f,
            other.top_vals.view(-1)[held],
            other.top_ctx.view(-1)[held],
            other.top_pos.view(-1)[held],
            other.top_window.view(-1, other.top_window.shape[2])[held],
            other.top_key.view(-1)[held],
        )

    def to(self, device) -> FeatureAccumulator:
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        if self.quantiles is not None:
            self.quantiles.to(device)
        self.device = torch.device(device)
        return self

    # Ray pickles accumulators between workers and the driver: ship CPU tensors.
    def __getstate__(self):
        state = dict(vars(self))
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.cpu()
        state["device"] = "cpu"
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.device = torch.device("cpu")
