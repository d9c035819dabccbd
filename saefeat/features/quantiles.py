"""Quantile samples: a few examples from each activation decile of every feature.

The top-N examples show only a feature's strongest activations; these show the whole
range. Bins are equal-width slices of (0, max activation] (Neuronpedia's "activation
quantiles"), `n_bins` of them, `per_bin` samples each.

One pass, no second read of the data: every firing draws a uniform random key and each
(feature, bin) keeps the `per_bin` firings with the smallest keys, a bottom-k reservoir.
Bottom-k by independent uniform keys is a uniform sample without replacement, and two
reservoirs merge by keeping the bottom-k of their union, so Ray workers' samplers merge
exactly. The bins follow the running maximum: each merge re-bins the held samples
against the current max. A firing seen while the max was still lower may have been
dropped from a bin it no longer belongs to, so the sample is exact once a feature's max
is reached and approximate before; with the max usually reached early in a shuffled
stream, the weak bins (where most firings are) are unaffected in practice.
Everything is tensor ops: a segmented sort per merge, never a loop over features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from saefeat.features.segments import merge_into_table, segment_rank, segment_top

WindowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class QuantileSampler:
    def __init__(
        self,
        d_sae: int,
        n_bins: int,
        per_bin: int,
        width: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        self.d_sae, self.n_bins, self.per_bin, self.width = d_sae, n_bins, per_bin, width
        self.device = torch.device(device)
        slots = (d_sae * n_bins, per_bin)
        dev = self.device
        self.key = torch.full(slots, float("inf"), device=dev)  # inf = empty slot
        self.val = torch.zeros(slots, device=dev)
        self.ctx = torch.full(slots, -1, dtype=torch.long, device=dev)
        self.pos = torch.full(slots, -1, dtype=torch.long, device=dev)
        self.window = torch.zeros(*slots, width, device=dev)
        self.generator = torch.Generator(device=dev).manual_seed(seed)

    def _bins(self, f: torch.Tensor, v: torch.Tensor, act_max: torch.Tensor) -> torch.Tensor:
        top = act_max[f].clamp_min(torch.finfo(torch.float32).tiny)
        b = (v / top * self.n_bins).floor().long().clamp_(0, self.n_bins - 1)
        return f * self.n_bins + b

    @torch.no_grad()
    def add(
        self,
        f: torch.Tensor,
        v: torch.Tensor,
        r: torch.Tensor,
        *,
        act_max: torch.Tensor,
        max_grew: torch.Tensor,
        first_context: int,
        ctx_len: int,
        windows: WindowFn,
    ) -> None:
        """Offer the firings (feature f, value v, row r) of one block; `act_max` is the
        running max including this block, `max_grew[d]` whether this block raised it."""
        key = torch.rand(f.shape, generator=self.generator, device=self.device)
        g = self._bins(f, v, act_max)
        # A firing can enter only if it beats its bin's worst held key. Where the max just
        # grew the held bins are stale until the merge below, so let those through.
        keep = (key < self.key[g, -1]) | max_grew[f]
        f, v, r, g, key = f[keep], v[keep], r[keep], g[keep], key[keep]
        sel = segment_top(g, -key, self.per_bin, self.d_sae * self.n_bins)
        f, v, r, g, key = f[sel], v[sel], r[sel], g[sel], key[sel]
        fresh = (g, key, v, first_context + r // ctx_len, r % ctx_len, windows(f, r))
        self._merge([fresh, self._take_held(max_grew, act_max)])

    def _fields(self) -> list[tuple[torch.Tensor, float]]:
        return [(self.val, 0.0), (self.ctx, -1), (self.pos, -1), (self.window, 0.0)]

    def _take_held(self, features: torch.Tensor, act_max: torch.Tensor):
        """Remove the held samples of these features (a bool mask) and return them as
        candidates, binned against `act_max`: how samples move when a max grows."""
        per_feature = self.n_bins * self.per_bin
        held = (self.key.view(self.d_sae, per_feature) < float("inf")) & features[:, None]
        held = held.view(-1)
        f = torch.div(
            torch.arange(held.numel(), device=self.device), per_feature, rounding_mode="floor"
        )[held]
        taken = [t.reshape(held.numel(), *t.shape[2:])[held].clone() for t, _ in self._fields()]
        key = self.key.view(-1)[held].clone()
        self.key.view(-1)[held] = float("inf")
        for tensor, fill in self._fields():
            tensor.view(held.numel(), *tensor.shape[2:])[held] = fill
        return (self._bins(f, taken[0], act_max), key, *taken)

    def _merge(self, parts) -> None:
        g, key, *fields = (torch.cat(column) for column in zip(*parts, strict=True))
        merge_into_table(self.key, self._fields(), g, key, fields, largest=False)

    @torch.no_grad()
    def merge(self, other: QuantileSampler, act_max: torch.Tensor) -> None:
        """Fold another worker's sampler in; `act_max` is the merged maximum."""
        every = torch.ones(self.d_sae, dtype=torch.bool, device=self.device)
        mine = self._take_held(every, act_max)
        theirs = other.to(self.device)._take_held(every, act_max)
        self._merge([mine, theirs])

    def samples(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(feature, value, context, position, window) of every held sample, each feature's
        strongest first."""
        held = (self.key.view(-1) < float("inf")).nonzero().squeeze(1)
        f = torch.div(held, self.n_bins * self.per_bin, rounding_mode="floor")
        v = self.val.view(-1)[held]
        order, _ = segment_rank(f, v, self.d_sae)
        held, f = held[order], f[order]
        return (
            f,
            self.val.view(-1)[held],
            self.ctx.view(-1)[held],
            self.pos.view(-1)[held],
            self.window.view(-1, self.width)[held],
        )

    def to(self, device) -> QuantileSampler:
        device = torch.device(device)
        for name in ("key", "val", "ctx", "pos", "window"):
            setattr(self, name, getattr(self, name).to(device))
        if device != self.device:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device
        return self

    # torch.Generator does not pickle: ship a seed drawn from it instead (Ray moves
    # samplers between processes; the keys stay independent uniforms either way).
    def __getstate__(self):
        state = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        state["generator"] = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        state["device"] = "cpu"
        return state

    def __setstate__(self, state):
        seed = state.pop("generator")
        self.__dict__.update(state)
        self.device = torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)
