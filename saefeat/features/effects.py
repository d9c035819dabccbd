"""A feature's effect on the next token: measured by removing it, and its de-biased projection.

Two rankings of the vocabulary per feature, beside the raw direct projection of vocab.py
(`(W_dec[f] * final-norm scale) @ W_U^T`, which at a middle layer is headed by the same
word-start fragments for many unrelated features):

**measured** ("TokenChange", Gur-Arieh et al. 2025, output-centric feature descriptions).
For a few contexts where the feature fires (its strongest top examples: context row and
focus position), remove the feature's contribution where the SAE's decoder writes (its
hook; a transcoder's output hook, the MLP's output, while its activation a_f comes from
the hook it reads) at the focus position, y - a_f * W_dec[f] (a_f: the example's
activation), run the rest of the model,
and take the drop in each token's next-token probability at that position,
p_clean - p_removed. The mean drop over the contexts ranks the vocabulary: `up`, the
tokens that lose most when the feature is removed (what it makes more likely), and
`down`, those that gain most (what it makes less likely; values < 0). Only the focus
position is edited and read: the feature fires there most strongly, and it keeps the
work to one extra token per (feature, context) instead of a forward per pair.

Why probability, not log-probability (`score="logprob"` keeps the latter): within one
context the drop in log-probability is the drop in the token's logit less one constant,
so it ranks by logit change alone, and the largest logit changes are those of tokens the
model never predicts there (rare fragments whose unembedding rows are long). On the
demo's SAE the log-probability lists were such fragments for almost every feature
(feature 199, on " recent" in "most recent call last": 'sema', 'claimer', ' process',
...), while the probability lists name what the feature does in its contexts (' call'
+14 points; ' caller', ' last' less likely). The probability drop is the per-token
share of the probability mass the feature moves.

How it is batched: every pair of one context runs in ONE forward of that context. The
sequence is the context's prefix up to its last focus, then one *clean copy* and one
*edited copy* of the focus token per pair, each at its own position id and with a 4D
attention mask that lets it see only the clean prefix before it and itself. Earlier
layers compute a copy exactly as they compute the focus token (same token, position and
keys), the hook subtracts a_f * W_dec[f] on the edited copies only, and the logits are
taken at the copies alone (`logits_to_keep`). Cost: one forward over the distinct
contexts' prefixes plus two tokens per pair, and the unembedding over two rows per pair.
Several contexts share a forward (rows padded, pads attending only to themselves).
With the hook's activations at hand (the activation set's, as indexing passes them) and
a residual hook, the layers up to the hook do not run at all: for each forward they are
swapped for stand-ins that hand those activations (the edited copies' with the feature
already removed) to the next layer, which halves the work at a middle layer.
On the demo's SAE (4,601 live features x 4 contexts = 18,364 pairs over all 782
contexts of 128 tokens: 111 forwards, 167k tokens through layers 16-29) that is 515 s of
CPU time in fp32 on 2 threads, about 4.5 minutes on 2 free cores; bf16 weights were no
faster on that CPU and agreed on 83% of the top 10, so the model stays fp32.

A crosscoder (saefeat/sae/crosscoder.py) has no measured effect: its dictionary spans
several models or layers, and removing a feature from one model's forward at one hook
measures only a part of it; indexing stores its de-biased projection alone (of each
feature's row in the source it writes most to, through the first source's model:
features/crosscoder.py).

**debiased** (the direct projection ranked against each token's baseline). The raw
direct logits L[f, t] are z-scored per token over all features:
z[f, t] = (L[f, t] - mean_g L[g, t]) / std_g L[g, t]. We chose this over removing the
mean decoder row alone: fragments head unrelated lists not (only) because every decoder
row shares a direction, but because their unembedding rows are long along the directions
in which decoder rows vary most, so their logit swings widely for *every* feature. The
mean removal leaves that spread, the per-token scale removes it: each token then has mean
0 and spread 1 across features, so a token can only head lists of features that are
unusual for it. mean_g and std_g are exact and cheap: L[:, t] = R @ w_t with R the scaled
decoder rows, so the mean is m @ w_t and the variance w_t^T C w_t (m and C the mean and
covariance of the rows of R). On the demo's SAE (SmolLM2-135M, layer 15, 4,608 latents)
the largest share of features one token id is in the top 10 of (`fragment_share_top10`)
is 6.9% raw (' strugg'), 6.9% with the mean decoder row removed, 1.1% with the per-token
scale alone and 0.95% z-scored. (Count by token id: the ~100 byte tokens that each
decode to '\ufffd' would otherwise count as one.)

`fragment_share_top10` and `overlap_at_10` are the two numbers the bench reports over
these lists.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from saefeat.features.records import TokenEffects
from saefeat.features.vocab import direct_logits
from saefeat.lm import LanguageModel, edit_at, parse_hook

MAX_COPIES = 32  # pairs packed after one context prefix; more start another sequence
BATCH_TOKENS = 8192  # tokens (rows x sequence length) per forward
LOGIT_ROWS = 512  # copies whose logits one forward returns (x vocab floats each)
ACCUMULATOR_BYTES = 1 << 30  # the [features, vocab] sums of one pass over the contexts


# ---- which examples ---------------------------------------------------------------


@dataclass
class EffectPairs:
    """(feature, context row, focus position, activation) per pair, as 1D arrays."""

    features: np.ndarray
    contexts: np.ndarray
    positions: np.ndarray
    activations: np.ndarray

    def __len__(self) -> int:
        return int(self.features.shape[0])


def effect_pairs(
    top_vals: torch.Tensor | np.ndarray,
    top_ctx: torch.Tensor | np.ndarray,
    top_pos: torch.Tensor | np.ndarray,
    n_contexts: int,
) -> EffectPairs:
    """Each feature's `n_contexts` strongest top examples ([d_sae, n_top] tables of a
    FeatureAccumulator, strongest first), skipping empty slots."""
    vals, ctx, pos = (np.asarray(t)[:, :n_contexts] for t in (top_vals, top_ctx, top_pos))
    keep = np.isfinite(vals) & (vals > 0) & (ctx >= 0) & (pos >= 0)
    f, _ = np.nonzero(keep)
    return EffectPairs(
        f.astype(np.int64), ctx[keep].astype(np.int64), pos[keep].astype(np.int64),
        vals[keep].astype(np.float32),
    )  # fmt: skip


# ---- measured ---------------------------------------------------------------------


@dataclass
class _Group:
    """One packed sequence: a context's prefix and up to MAX_COPIES pairs on it."""

    context: int
    pairs: np.ndarray  # indices into EffectPairs

    def prefix(self, positions: np.ndarray) -> int:
        return int(positions[self.pairs].max()) + 1


def _groups(pairs: EffectPairs, select: np.ndarray) -> list[_Group]:
    order = select[np.argsort(pairs.contexts[select], kind="stable")]
    out = []
    ctx = pairs.contexts[order]
    bounds = np.flatnonzero(np.diff(ctx)) + 1
    for run in np.split(order, bounds):
        if run.size == 0:
            continue
        for i in range(0, run.size, MAX_COPIES):
            out.append(_Group(int(pairs.contexts[run[0]]), run[i : i + MAX_COPIES]))
    return out


def _batches(
    groups: list[_Group], positions: np.ndarray, context_block: int | None = None
) -> list[list[_Group]]:
    """Groups of similar prefix length together, within the token and logit budgets;
    with `context_block`, contexts of one block (a shard of the set) first."""
    block = (lambda g: g.context // context_block) if context_block else (lambda g: 0)
    groups = sorted(groups, key=lambda g: (block(g), g.prefix(positions)))
    out: list[list[_Group]] = []
    cur: list[_Group] = []
    t_max = k_max = 0
    for g in groups:
        t, k = max(t_max, g.prefix(positions)), max(k_max, len(g.pairs))
        rows = len(cur) + 1
        if cur and (rows * (t + 2 * k) > BATCH_TOKENS or rows * 2 * k > LOGIT_ROWS):
            out.append(cur)
            cur, t, k = [], g.prefix(positions), len(g.pairs)
        cur.append(g)
        t_max, k_max = t, k
    if cur:
        out.append(cur)
    return out


@dataclass
class _Packed:
    input_ids: torch.Tensor  # [B, S]
    position_ids: torch.Tensor  # [B, S]
    mask: torch.Tensor  # [B, 1, S, S] additive
    n_copies: int  # K: copies per kind; clean at [T, T+K), edited at [T+K, T+2K)
    edit_rows: torch.Tensor  # [E] batch row of each edited copy
    edit_cols: torch.Tensor  # [E] its index in the sequence
    pair_of_copy: torch.Tensor  # [B, K] pair index per copy slot, -1 for empty
    source: torch.Tensor  # [B, S] the context position each token is (-1: a pad)


def _pack(
    batch: list[_Group], tokens: np.ndarray, pairs: EffectPairs, pad_id: int, dtype: torch.dtype
) -> _Packed:
    T = max(g.prefix(pairs.positions) for g in batch)
    K = max(len(g.pairs) for g in batch)
    B, S = len(batch), T + 2 * K
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    pos = torch.zeros((B, S), dtype=torch.long)
    allowed = torch.eye(S, dtype=torch.bool).repeat(B, 1, 1)  # everything sees itself
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    pair_of_copy = torch.full((B, K), -1, dtype=torch.long)
    source = torch.full((B, S), -1, dtype=torch.long)
    rows, cols = [], []
    for b, g in enumerate(batch):
        t = g.prefix(pairs.positions)
        ids[b, :t] = torch.from_numpy(np.asarray(tokens[g.context, :t], dtype=np.int64))
        pos[b, :T] = torch.arange(T)
        source[b, :t] = torch.arange(t)
        allowed[b, :t, :t] = causal[:t, :t]
        p = torch.from_numpy(pairs.positions[g.pairs])
        k = len(g.pairs)
        pair_of_copy[b, :k] = torch.from_numpy(g.pairs)
        for base in (T, T + K):
            ids[b, base : base + k] = ids[b, p]
            pos[b, base : base + k] = p
            source[b, base : base + k] = p
            # A copy sees the clean prefix before its position (and itself).
            allowed[b, base : base + k, :T] = torch.arange(T)[None, :] < p[:, None]
        rows += [b] * k
        cols += list(range(T + K, T + K + k))
    mask = torch.zeros((B, 1, S, S), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return _Packed(ids, pos, mask, K, torch.tensor(rows), torch.tensor(cols), pair_of_copy, source)


class _Edit:
    """Subtracts `delta` at (rows, cols) of the hook's activations during a forward (the
    model's lock held while entered: edit_at takes it)."""

    def __init__(self, lm: LanguageModel, hook: str):
        self.lm, self.point = lm, parse_hook(hook)
        self.rows = self.cols = self.delta = None

    def _apply(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[self.rows, self.cols] -= self.delta.to(t.dtype)
        return t

    def __enter__(self) -> _Edit:
        self.handle = edit_at(self.lm, self.point, self._apply)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


HookActs = Callable[[np.ndarray], torch.Tensor]


def tail_supported(hook: str) -> bool:
    """Whether the layers after `hook` can run alone from its activations: a residual
    hook with a block before it (resid_post, or resid_pre after layer 0)."""
    point = parse_hook(hook)
    return point.kind == "resid_post" or (point.kind == "resid_pre" and point.layer > 0)


class _StandIn(torch.nn.Module):
    """Takes a block's place for one forward: passes its input on, or (`inject`) returns
    the tail's activations instead, as the block it replaces would (tensor or tuple)."""

    def __init__(self, tail: _Tail, block: torch.nn.Module, inject: bool):
        super().__init__()
        self.tail, self.inject = tail, inject
        if hasattr(block, "attention_type"):  # families that pick a mask per layer
            self.attention_type = block.attention_type

    def forward(self, *args, **kwargs):
        h = self.tail.value if self.inject else (args[0] if args else kwargs["hidden_states"])
        return (h,) if self.tail.as_tuple else h


class _Tail:
    """While entered, the blocks up to the hook are stand-ins and the model's forward runs
    only the layers after it, from `value` [B, S, d] (the hook's activations). Entered, it
    holds the model's lock: another thread's forward would run the stand-ins too."""

    def __init__(self, lm: LanguageModel, hook: str):
        point = parse_hook(hook)
        self.lock = lm.exclusive()
        self.blocks = lm.blocks
        self.last = point.layer if point.kind == "resid_post" else point.layer - 1
        self.value: torch.Tensor | None = None
        # What the replaced block returns, seen on a one-token forward.
        seen: list[bool] = []
        with self.lock:
            handle = self.blocks[self.last].register_forward_hook(
                lambda m, a, out: seen.append(isinstance(out, tuple))
            )
            try:
                lm.model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=lm.device),
                         use_cache=False)  # fmt: skip
            finally:
                handle.remove()
        self.as_tuple = bool(seen and seen[0])

    def __enter__(self) -> _Tail:
        self.lock.acquire()
        self.saved = [self.blocks[i] for i in range(self.last + 1)]
        for i, block in enumerate(self.saved):
            self.blocks[i] = _StandIn(self, block, inject=i == self.last)
        return self

    def __exit__(self, *exc) -> None:
        try:
            for i, block in enumerate(self.saved):
                self.blocks[i] = block
        finally:
            self.lock.release()


def _keeps_logits(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _feature_chunks(features: np.ndarray, vocab: int, budget: int) -> list[np.ndarray]:
    uniq = np.unique(features)
    per = max(1, budget // (vocab * 4))
    return [uniq[i : i + per] for i in range(0, uniq.size, per)]


@torch.inference_mode()
def measured_effects(
    lm: LanguageModel,
    W_dec: torch.Tensor,
    hook: str,
    tokens: np.ndarray,
    pairs: EffectPairs,
    strings: list[str],
    n: int = 20,
    *,
    score: Literal["prob", "logprob"] = "prob",
    progress: Callable[[int, int], None] | None = None,
    accumulator_bytes: int = ACCUMULATOR_BYTES,
    hook_acts: HookActs | None = None,
    context_block: int | None = None,
) -> list[TokenEffects]:
    """Method `measured` for every feature that has pairs (see the module docstring):
    values are the mean drop in probability (`score="prob"`, 0.14 = 14 points) or in
    log-probability (nats).

    `hook`: where the decoder writes (`SAEConfig.write_hook`: an SAE's hook, a
    transcoder's output hook); `tokens`: the activation set's token ids [contexts,
    ctx_len]; `W_dec`: the SAE's decoder [d_sae, d_out] in the model's activation units.
    The model's lock is held around each forward (its hook or stand-ins), not the whole
    run: other threads' forwards (live search, steering) take turns with it. Features are
    done in passes whose [features, vocab] sums fit `accumulator_bytes`; a context used by
    several passes runs once in each.

    `hook_acts` (context rows -> their activations at the hook, [n, ctx_len, d]; the
    activation set's): with a residual hook (`tail_supported`), the blocks up to the hook
    do not run: for each forward they are swapped for stand-ins that hand the given
    activations to the next layer, the edited copies with the feature already removed
    (about half the work at a middle layer). `context_block`: contexts read together
    (the set's contexts per shard), kept in the same forwards."""
    if lm.is_encoder or len(pairs) == 0:
        return []
    model, device = lm.model, lm.device
    dtype = next(model.parameters()).dtype
    vocab = int(model.get_output_embeddings().weight.shape[0])
    pad_id = int(getattr(lm.tokenizer, "pad_token_id", None) or 0)
    keep = _keeps_logits(model)
    tail = _Tail(lm, hook) if hook_acts is not None and tail_supported(hook) else None
    W = W_dec.detach().to(device, torch.float32)
    chunks = _feature_chunks(pairs.features, vocab, accumulator_bytes)
    plans = []
    for chunk in chunks:
        select = np.flatnonzero(np.isin(pairs.features, chunk))
        plans.append((chunk, _batches(_groups(pairs, select), pairs.positions, context_block)))
    total, done = sum(len(b) for _, b in plans), 0
    out: list[TokenEffects] = []
    for chunk, batches in plans:
        local = np.full(int(pairs.features.max()) + 1, -1, dtype=np.int64)
        local[chunk] = np.arange(chunk.size)
        sums = torch.zeros(chunk.size, vocab, device=device)
        counts = torch.zeros(chunk.size, device=device)
        for batch in batches:
            packed = _pack(batch, tokens, pairs, pad_id, dtype)
            edited = packed.pair_of_copy[packed.pair_of_copy >= 0]  # row-major, as rows/cols
            rows_, cols_ = packed.edit_rows.to(device), packed.edit_cols.to(device)
            f = torch.from_numpy(pairs.features[edited.numpy()]).to(device)
            a = torch.from_numpy(pairs.activations[edited.numpy()]).to(device)
            delta = a[:, None] * W[f]
            if tail is not None:
                acts = hook_acts(np.array([g.context for g in batch])).to(device, torch.float32)
                src = packed.source.to(device)
                value = acts[torch.arange(len(batch), device=device)[:, None], src.clamp(min=0)]
                value = value * (src >= 0)[..., None]
                value[rows_, cols_] -= delta
                tail.value, change = value.to(dtype), tail
            else:
                change = _Edit(lm, hook)
                change.rows, change.cols, change.delta = rows_, cols_, delta
            K = packed.n_copies
            extra = {"logits_to_keep": 2 * K} if keep else {}
            with change:
                logits = model(
                    input_ids=packed.input_ids.to(device),
                    attention_mask=packed.mask.to(device),
                    position_ids=packed.position_ids.to(device),
                    use_cache=False,
                    **extra,
                ).logits[:, -2 * K :]
            if tail is not None:
                tail.value = None
            slots = packed.pair_of_copy.to(device) >= 0
            clean = torch.log_softmax(logits[:, :K][slots].float(), dim=-1)
            removed = torch.log_softmax(logits[:, K:][slots].float(), dim=-1)
            if score == "prob":
                clean, removed = clean.exp(), removed.exp()
            rows = torch.from_numpy(local[pairs.features[edited.numpy()]]).to(device)
            sums.index_add_(0, rows, clean - removed)
            counts.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float32))
            done += 1
            if progress:
                progress(done, total)
        mean = sums / counts.clamp(min=1)[:, None]
        out += _rankings(chunk, mean, strings, n, "measured")
    out.sort(key=lambda e: e.feature_index)
    return out


def _rankings(
    features: np.ndarray, scores: torch.Tensor, strings: list[str], n: int, method: str
) -> list[TokenEffects]:
    n = min(n, scores.shape[1])
    up = scores.topk(n, dim=1)
    down = scores.topk(n, dim=1, largest=False)
    up_ids, up_vals = up.indices.tolist(), up.values.tolist()
    down_ids, down_vals = down.indices.tolist(), down.values.tolist()
    text = lambda ids: [strings[i] if i < len(strings) else "" for i in ids]  # noqa: E731
    return [
        TokenEffects(
            feature_index=int(f),
            method=method,  # type: ignore[arg-type]
            up_ids=up_ids[i],
            up_strs=text(up_ids[i]),
            up_values=up_vals[i],
            down_ids=down_ids[i],
            down_strs=text(down_ids[i]),
            down_values=down_vals[i],
        )  # fmt: skip
        for i, f in enumerate(features.tolist())
    ]


# ---- debiased ---------------------------------------------------------------------


def _scaled_rows(W_dec: torch.Tensor, norm_scale: torch.Tensor | None) -> torch.Tensor:
    rows = W_dec.detach().float()
    return rows * norm_scale.to(rows.device).float() if norm_scale is not None else rows


@torch.no_grad()
def token_baselines(
    W_dec: torch.Tensor, W_U: torch.Tensor, norm_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) over all features of each token's direct logit, [vocab] each: exact,
    from the mean and covariance of the scaled decoder rows."""
    R = _scaled_rows(W_dec, norm_scale).double()
    W = W_U.to(R.device).double()
    m = R.mean(0)
    centred = R - m
    C = centred.T @ centred / R.shape[0]
    mean = W @ m
    var = ((W @ C) * W).sum(1)
    return mean.float(), var.clamp(min=0).sqrt().float()


@torch.no_grad()
def debiased_projections(
    W_dec: torch.Tensor,
    unembedding: tuple[torch.Tensor, torch.Tensor | None],
    strings: list[str],
    n: int = 20,
) -> list[TokenEffects]:
    """Method `debiased`: each feature's direct logits z-scored per token over all
    features (module docstring). Values are standard deviations. `unembedding`: (W_U,
    final-norm scale or None), as LanguageModel.unembedding gives them."""
    W_U, norm_scale = unembedding
    mean, std = token_baselines(W_dec, W_U, norm_scale)
    mean, std = mean.to(W_dec.device), std.to(W_dec.device)
    # A token no feature moves (std 0) ranks at 0, never as an infinity.
    inv = torch.where(std > 0, 1.0 / std.clamp(min=1e-12), torch.zeros_like(std))
    out = []
    for start, logits in direct_logits(W_dec, W_U, norm_scale):
        z = (logits - mean) * inv
        out += _rankings(np.arange(start, start + z.shape[0]), z, strings, n, "debiased")
    return out


# ---- the bench's numbers ----------------------------------------------------------


def fragment_share_top10(lists: Sequence[Sequence[int | str]]) -> float:
    """The largest share of lists any one token is in the first 10 of: 0.066 means one
    token heads (is in the top 10 of) 6.6% of the features. Empty lists (a feature with
    no measured effect) are not counted; 0.0 when every list is empty."""
    counts: Counter = Counter()
    n = 0
    for entries in lists:
        if len(entries) == 0:
            continue
        n += 1
        counts.update(set(list(entries)[:10]))
    return max(counts.values()) / n if n else 0.0


def overlap_at_10(a: Sequence[Sequence[int | str]], b: Sequence[Sequence[int | str]]) -> float:
    """Mean over features of |top10(a) & top10(b)| / 10 for two aligned rankings (e.g. the
    measured `up` list and the projection's top list of each feature); pairs where either
    list is empty are skipped; nan when none is left."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} lists against {len(b)}: they must be aligned by feature")
    shares = [
        len(set(list(x)[:10]) & set(list(y)[:10])) / 10
        for x, y in zip(a, b, strict=True)
        if len(x) and len(y)
    ]
    return float(np.mean(shares)) if shares else math.nan
