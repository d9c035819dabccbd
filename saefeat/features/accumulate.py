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

from saefeat.features.quantiles import QuantileSampler
from saefeat.features.segments import segment_rank, segment_top

HIST_EDGES = np.logspace(-4, 3, 57)  # 8 bins a decade over raw activation values
_CANDIDATE_CHUNK = 8192  # window gathers are [chunk, 2w+1, k]: bound their memory


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
        skip_first_position: bool = True,
    ) -> None:
        """Fold in the SAE output of `vals.shape[0] // ctx_len` consecutive whole contexts."""
        vals, idx = vals.to(self.device, torch.float32), idx.to(self.device)
        n_rows = vals.shape[0]
        rows = torch.arange(n_rows, device=self.device)
        pos = rows % ctx_len
        active = vals > 0
        if skip_first_position:
            active &= (pos != 0)[:, None]
        self.n_tokens += n_rows - (n_rows // ctx_len if skip_first_position else 0)
        f, v = idx[active], vals[active]
        r = rows[:, None].expand_as(idx)[active]
        self.fires.index_add_(0, f, torch.ones_like(f))
        self.act_sum.index_add_(0, f, v.double())
        max_before = self.act_max.clone() if self.quantiles is not None else None
        self.act_max.scatter_reduce_(0, f, v, reduce="amax")
        b = torch.bucketize(v, self._edges).clamp_(1, len(HIST_EDGES) - 1) - 1
        self.hist.view(-1).index_add_(0, f * self.hist.shape[1] + b, torch.ones_like(b))

        if self.quantiles is not None:
            self.quantiles.add(
                f,
                v,
                r,
                act_max=self.act_max,
                max_grew=self.act_max > max_before,
                first_context=first_context,
                ctx_len=ctx_len,
                windows=lambda ff, rr: self._windows(vals, idx, ff, rr, ctx_len),
            )
        # Only values above the feature's current N-th best can enter its top list.
        keep = v > self.top_vals[f, -1]
        f, v, r = f[keep], v[keep], r[keep]
        if f.numel() == 0:
            return
        # Cut to at most N per feature before the window gathers.
        sel = segment_top(f, v, self.n_top, self.d_sae)
        f, v, r = f[sel], v[sel], r[sel]
        windows = self._windows(vals, idx, f, r, ctx_len)
        self._merge(f, v, first_context + r // ctx_len, r % ctx_len, windows)

    def _windows(self, vals, idx, f, r, ctx_len) -> torch.Tensor:
        chunks = [slice(i, i + _CANDIDATE_CHUNK) for i in range(0, f.numel(), _CANDIDATE_CHUNK)]
        if not chunks:
            return torch.zeros(0, 2 * self.window + 1, device=self.device)
        return torch.cat([self._window_values(vals, idx, f[c], r[c], ctx_len) for c in chunks])

    def _window_values(self, vals, idx, f, r, ctx_len) -> torch.Tensor:
        """[n, 2w+1]: feature f's activation at each token around row r, same context only."""
        offsets = torch.arange(-self.window, self.window + 1, device=self.device)
        rr = r[:, None] + offsets[None, :]
        valid = (rr >= 0) & (rr < vals.shape[0]) & (rr // ctx_len == (r // ctx_len)[:, None])
        rr = rr.clamp(0, vals.shape[0] - 1)
        match = idx[rr] == f[:, None, None]  # [n, W, k]
        return (vals[rr] * match).sum(-1) * valid

    def _merge(self, f, v, ctx, pos, windows) -> None:
        held = self.top_vals.view(-1) > -float("inf")
        held_f = torch.arange(self.d_sae, device=self.device).repeat_interleave(self.n_top)[held]
        all_f = torch.cat([held_f, f])
        all_v = torch.cat([self.top_vals.view(-1)[held], v])
        all_ctx = torch.cat([self.top_ctx.view(-1)[held], ctx])
        all_pos = torch.cat([self.top_pos.view(-1)[held], pos])
        all_win = torch.cat([self.top_window.view(-1, windows.shape[1])[held], windows])
        order, rank = segment_rank(all_f, all_v, self.d_sae)
        keep = rank < self.n_top
        order, rank = order[keep], rank[keep]
        slot = all_f[order] * self.n_top + rank
        self.top_vals.fill_(-float("inf"))
        self.top_vals.view(-1)[slot] = all_v[order]
        self.top_ctx.view(-1)[slot] = all_ctx[order]
        self.top_pos.view(-1)[slot] = all_pos[order]
        self.top_window.view(-1, windows.shape[1])[slot] = all_win[order]

    @torch.no_grad()
    def merge(self, other: FeatureAccumulator) -> None:
        """Fold another worker's accumulator into this one."""
        other = other.to(self.device)
        self.n_tokens += other.n_tokens
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
