"""The Patchscope explainer (Ghandeharioun et al. 2024, "Patchscopes: A Unifying Framework
for Inspecting Hidden Representations of Language Models"): the SAE's own model decodes a
feature's direction, with no second model and no LLM endpoint.

The target prompt is the paper's identity prompt, few-shot "x -> x" lines ending in a
placeholder:

    cat -> cat
    1135 -> 1135
    hello -> hello
    ? ->

Where the SAE's decoder writes (its hook, of its layer and kind: `resid_post`,
`mlp_out`, ...; a transcoder's output hook, the MLP's output), on the placeholder's
position only, the feature's decoder row times `scale` x its max
activation is added, for each scale in SCALES (the direction then outweighs the
placeholder's own residual, whose norm is about that of one max-activation contribution
times 3-4 on the demo SAE), and the rest of the model runs unchanged. Two readouts come
from each forward:

- `continues`: the next-token distribution at the placeholder itself: what the model
  says comes after a token that carries the feature. Tokens are ranked by their share of
  KL(patched || unpatched) (p log(p / p0), summed over the scales), so a token the
  prompt makes likely anyway (" ->") does not head the list; a word start the model
  goes on to complete without a space is completed (" strugg" -> " struggling").
- `reads_as`: the identity readout after " ->": the few tokens the model answers
  greedily at the middle scale, kept only when they differ from its answer without the
  patch (" hello").

On SmolLM2-135M at layer 15 (the demo), `continues` is informative (the "for" feature:
"example", "instance"; "with": "respect", "regard"; "function": "call", "calls") and
`reads_as` rarely differs from " hello": a lone mid-layer direction is not a token the
135M model can repeat. Larger models repeat far more (the paper's setting), and the
readout is kept for them.

The explanation: 'the model reads it as "X"; the model continues it with "a", "b", "c"'
(explainers.label_parts reads it back; the scorers read its quoted words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from saefeat.errors import SpecError
from saefeat.interp.evidence import FeatureEvidence, quote
from saefeat.lm import LanguageModel, parse_hook

TARGET_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
ARROW = " ->"
SCALES = (10.0, 20.0, 40.0)  # x the feature's max activation times its decoder row
N_CONTINUES = 3  # tokens named from the `continues` readout
N_READ = 3  # greedy tokens of the identity readout
PROMPT_VERSION = "patchscope-v1"
_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class Subject:
    """What the Patchscope runs: the SAE's model (name and revision, as harvested), its
    checkpoint folder, the hook its decoder rows are added at (an SAE's hook; a
    transcoder's output hook), and a typical max activation of its live features (the
    strength its reference directions are patched at)."""

    model: str
    revision: str | None
    checkpoint: str
    hook: str
    typical_activation: float = 1.0


@dataclass
class Readout:
    continues: list[str]  # tokens it makes the model say next, best first (completed words)
    reads_as: str | None  # the identity readout, None where it is the unpatched answer
    kl: float  # KL(patched || unpatched) at the placeholder, mean over the scales (nats)


@lru_cache(maxsize=2)
def _decoder(checkpoint: str) -> torch.Tensor:
    from saefeat.sae import load_sae

    return load_sae(checkpoint).W_dec.detach().float()


def _patch(lm: LanguageModel, hook: str, position: int, vectors: torch.Tensor):
    """A forward hook handle that adds `vectors` [batch, d] at `position` of the hook.
    The caller holds the model's lock (`lm.exclusive()`) until it removes it."""
    point = parse_hook(hook)
    module = lm.module_for(point)

    def add(t: torch.Tensor) -> None:
        t[:, position] += vectors.to(t.dtype)

    if point.reads_input:  # a module's input (resid_pre, mlp_in)

        def pre(module, args, kwargs):
            add(args[0] if args else kwargs["hidden_states"])

        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(module, args, output):
        add(output[0] if isinstance(output, tuple | list) else output)

    return module.register_forward_hook(post)


def _logits(lm: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    return lm.model(input_ids=ids.to(lm.device), use_cache=False).logits.float()


class _Prompt:
    """The target prompt's token ids, where its placeholder is, and which tokens may be
    named (a word character, not a special token)."""

    def __init__(self, lm: LanguageModel):
        tok = lm.tokenizer
        head = tok(TARGET_PROMPT).input_ids  # with BOS where the model adds one
        full = tok(TARGET_PROMPT + ARROW).input_ids
        if full[: len(head)] != head:
            raise SpecError(
                f"the tokenizer of {lm.name} splits the Patchscope prompt's placeholder "
                "differently with and without the arrow",
                field="explainer",
            )
        self.head = torch.tensor(head)
        self.full = torch.tensor(full)
        self.position = len(head) - 1
        vocab = lm.model.get_output_embeddings().weight.shape[0]
        spelled = tok.batch_decode([[i] for i in range(vocab)])
        self.nameable = torch.tensor([bool(_WORD.search(t)) for t in spelled])
        special = [i for i in tok.all_special_ids if i < vocab]
        self.nameable[special] = False


def _prompt(lm: LanguageModel) -> _Prompt:
    """The prompt for this model, made once per loaded model."""
    prompt = getattr(lm, "_patchscope_prompt", None)
    if prompt is None:
        prompt = _Prompt(lm)
        lm._patchscope_prompt = prompt  # type: ignore[attr-defined]
    return prompt


@torch.inference_mode()
def patchscope(
    lm: LanguageModel,
    hook: str,
    directions: torch.Tensor,
    *,
    reference: list[torch.Tensor] | None = None,
    scales: tuple[float, ...] = SCALES,
    k: int = N_CONTINUES,
) -> list[Readout]:
    """Readouts of each row of `directions` [n, d_model] (a feature's contribution at its
    max activation: max_activation x decoder row), added at `hook` on the placeholder.

    Tokens are ranked against `reference` when given (`reference_logprobs`: per scale,
    the mean patched distribution of other features' directions), so words any
    direction makes likely there ("the", digits) do not head every list; else against
    the unpatched prompt."""
    n = directions.shape[0]
    if n == 0:
        return []
    # The model's lock across all of it: the patches are hooks on a model other threads
    # (other explain jobs, live search) run too.
    with lm.exclusive():
        prompt = _prompt(lm)
        pos, ids = prompt.position, prompt.full
        base_q = _logits(lm, ids[None])[0, pos].log_softmax(-1)
        base_answer = _greedy(lm, ids[None], hook, pos, None, N_READ)[0]
        score = torch.zeros(n, base_q.shape[-1])
        kl = torch.zeros(n)
        for j, s in enumerate(scales):
            logp = _patched_logprobs(lm, hook, prompt, directions * s)
            kl += (logp.exp() * (logp - base_q)).sum(-1)
            ref = reference[j] if reference is not None else base_q
            score += logp.exp() * (logp - ref)
        score[:, ~prompt.nameable] = -torch.inf
        top = score.topk(k, dim=-1).indices  # [n, k]
        middle = directions * scales[len(scales) // 2]
        words = _complete(lm, prompt, hook, middle, top)
        answers = _greedy(lm, ids.expand(n, -1), hook, pos, middle, N_READ)
    unpatched = _first_line(base_answer)
    out = []
    for i in range(n):
        said = _first_line(answers[i])
        out.append(Readout(words[i], said if said and said != unpatched else None,
                           float(kl[i]) / len(scales)))  # fmt: skip
    return out


def _patched_logprobs(
    lm: LanguageModel, hook: str, prompt: _Prompt, vectors: torch.Tensor
) -> torch.Tensor:
    """[n, vocab] next-token log-probabilities at the placeholder, `vectors` added there."""
    handle = _patch(lm, hook, prompt.position, vectors)
    try:
        logits = _logits(lm, prompt.full.expand(vectors.shape[0], -1))
    finally:
        handle.remove()
    return logits[:, prompt.position].log_softmax(-1)


@torch.inference_mode()
def reference_logprobs(
    lm: LanguageModel, hook: str, rows: torch.Tensor, scales: tuple[float, ...] = SCALES
) -> list[torch.Tensor]:
    """Per scale, log of the mean patched next-token distribution at the placeholder over
    `rows` [r, d_model] (a sample of the SAE's directions at a typical strength)."""
    with lm.exclusive():
        prompt = _prompt(lm)
        return [_patched_logprobs(lm, hook, prompt, rows * s).exp().mean(0).log() for s in scales]


def _first_line(text: str) -> str:
    return text.split("\n")[0].strip()


def _greedy(
    lm: LanguageModel,
    ids: torch.Tensor,
    hook: str,
    pos: int,
    vectors: torch.Tensor | None,
    steps: int,
) -> list[str]:
    """Greedy continuations of `ids` [n, t] with `vectors` added at `pos` (none: plain)."""
    handle = _patch(lm, hook, pos, vectors) if vectors is not None else None
    try:
        x = ids
        for _ in range(steps):
            nxt = _logits(lm, x)[:, -1].argmax(-1, keepdim=True).cpu()
            x = torch.cat([x, nxt], dim=1)
    finally:
        if handle is not None:
            handle.remove()
    return [lm.tokenizer.decode(row[ids.shape[1] :].tolist()) for row in x]


def _complete(
    lm: LanguageModel, prompt: _Prompt, hook: str, vectors: torch.Tensor, top: torch.Tensor
) -> list[list[str]]:
    """Each top token as a word: followed by the model's greedy next token (under the same
    patch) when that token goes on without a space (" strugg" + "ling")."""
    n, k = top.shape
    rows = torch.cat([prompt.head.expand(n * k, -1), top.reshape(-1, 1)], dim=1)
    handle = _patch(lm, hook, prompt.position, vectors.repeat_interleave(k, dim=0))
    try:
        nxt = _logits(lm, rows)[:, -1].argmax(-1)
    finally:
        handle.remove()
    decode = lm.tokenizer.decode
    out: list[list[str]] = []
    for i in range(n):
        words: list[str] = []
        for j in range(k):
            first = decode([int(top[i, j])])
            rest = decode([int(nxt[i * k + j])])
            word = first + rest if _continues_word(first, rest) else first
            if word.strip() and word.strip() not in {w.strip() for w in words}:
                words.append(word)
        out.append(words)
    return out


def _continues_word(first: str, rest: str) -> bool:
    """`rest` goes on with the word `first` starts: letters, no space before them."""
    return bool(re.fullmatch(r"\s?[A-Za-z]+", first)) and bool(re.fullmatch(r"[a-z]+", rest))


def readout_text(readout: Readout) -> str | None:
    """'the model reads it as "X"; the model continues it with "a", "b"' (None: no words)."""
    parts = []
    if readout.reads_as:
        parts.append("the model reads it as " + quote(readout.reads_as))
    if readout.continues:
        shown = [quote(w.strip() or w) for w in readout.continues]
        parts.append("the model continues it with " + ", ".join(shown))
    return "; ".join(parts) or None


N_REFERENCE = 64  # decoder rows whose mean patched distribution tokens are ranked against
_loaded: dict[Subject, tuple[LanguageModel, torch.Tensor, list[torch.Tensor]]] = {}


class PatchscopeExplainer:
    """A feature's decoder row, scaled to its max activation, decoded by the SAE's own
    model through the identity prompt (module docstring). Needs the `Subject` (the plan
    knows it); the model, decoder and reference load on first use, once per process."""

    name = "patchscope"
    prompt_version = PROMPT_VERSION

    def __init__(self, subject: Subject | None, *, batch: int = 64):
        self.subject = subject
        self.model = subject.model if subject else None
        self.batch = batch

    def _loaded(self) -> tuple[LanguageModel, torch.Tensor, list[torch.Tensor]]:
        from saefeat.lm import auto_dtype, cached_model

        if self.subject is None:
            raise SpecError(
                "'patchscope' needs the SAE's checkpoint and model on record", field="explainer"
            )
        s = self.subject
        if s not in _loaded:  # once per process: a Ray worker makes an explainer per batch
            lm = cached_model(s.model, s.revision, "cpu", auto_dtype("cpu"))
            decoder = _decoder(s.checkpoint)
            live = torch.nonzero(decoder.norm(dim=1) > 0).flatten()
            pick = torch.randperm(live.numel(), generator=torch.Generator().manual_seed(0))
            rows = decoder[live[pick[:N_REFERENCE]]] * s.typical_activation
            _loaded.clear()
            _loaded[s] = (lm, decoder, reference_logprobs(lm, s.hook, rows))
        return _loaded[s]

    def explain(self, evidence: FeatureEvidence) -> str:
        result = self.explain_many([evidence])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def explain_many(self, evidence: list[FeatureEvidence]) -> list[str | Exception]:
        """One text (or the error) per feature, `batch` features a forward."""
        lm, decoder, reference = self._loaded()
        assert self.subject is not None
        out: list[str | Exception] = []
        for b in range(0, len(evidence), self.batch):
            chunk = evidence[b : b + self.batch]
            rows = torch.stack([decoder[ev.index] * max(ev.max_activation, 0.0) for ev in chunk])
            for r in patchscope(lm, self.subject.hook, rows, reference=reference):
                out.append(readout_text(r) or SpecError("the patched model named no word"))
        return out
