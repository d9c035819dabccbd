"""The contrast demo's two corpora: human text vs what the model writes from the same start.

The built-in corpus (CPython's documentation topics) has only 79 documents, too few
units for document-level statistics, so both sides are cut from its paragraphs: each
paragraph of at least `min_chars` characters gives a prompt (its first `prompt_tokens`
tokens). The human document is the rest of the paragraph; the generated document is
the model's own continuation of the prompt (sampled, seeded). Neither side contains the
prompt, so the two corpora differ only in who wrote the text after it. Both are written
as JSONL (a `text` field) and harvested like any corpus.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from saefeat.corpus import builtin_python_docs
from saefeat.lm import auto_dtype, load_model, model_config_and_tokenizer

PROMPT_TOKENS = 16  # a prompt: the paragraph's first tokens


@dataclass
class Prompt:
    doc_id: str
    prompt: list[int]  # the paragraph's first tokens
    rest: list[int]  # the paragraph's remaining tokens (the human continuation)


def paragraph_prompts(
    tokenizer, *, prompt_tokens: int = PROMPT_TOKENS, min_chars: int = 200
) -> list[Prompt]:
    out = []
    for doc in builtin_python_docs():
        for i, para in enumerate(p.strip() for p in doc.text.split("\n\n")):
            if len(para) < min_chars:
                continue
            ids = tokenizer(para, add_special_tokens=False)["input_ids"]
            if len(ids) > 2 * prompt_tokens:
                out.append(Prompt(f"{doc.doc_id}#{i}", ids[:prompt_tokens], ids[prompt_tokens:]))
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


def write_human_corpus(path: Path, prompts: list[Prompt], tokenizer) -> Path:
    return _write_jsonl(
        path, [{"text": tokenizer.decode(p.rest), "doc_id": p.doc_id} for p in prompts]
    )


def generate_corpus(
    path: Path,
    prompts: list[Prompt],
    *,
    model: str,
    revision: str | None = None,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    top_p: float = 0.95,
    progress=None,
) -> Path:
    """The model's sampled continuation of every prompt, as JSONL. Batch b is sampled
    with seed (seed, b), so a rerun writes the same file. `revision` is the one the
    corpora will be harvested at: the generated side is that model's own text."""
    lm = load_model(model, revision=revision, device=device, dtype=auto_dtype(device))
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for b in range(0, len(prompts), batch_size):
        batch = prompts[b : b + batch_size]
        width = max(len(p.prompt) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):  # left padding: every prompt ends where generation starts
            ids[i, width - len(p.prompt) :] = torch.tensor(p.prompt)
            mask[i, width - len(p.prompt) :] = 1
        torch.manual_seed(seed * 1_000_003 + b)
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=True,
                top_p=top_p,
                top_k=0,
                temperature=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
        for p, row in zip(batch, out[:, width:].tolist(), strict=True):
            text = tok.decode(row, skip_special_tokens=True)
            rows.append({"text": text, "doc_id": p.doc_id})
        if progress:
            progress(min(b + batch_size, len(prompts)), len(prompts))
    return _write_jsonl(path, rows)


def write_demo_corpora(
    folder: Path,
    *,
    model: str,
    revision: str | None = None,
    prompt_tokens: int = PROMPT_TOKENS,
    max_prompts: int | None = None,
    **gen,
) -> tuple[Path, Path]:
    """(human.jsonl, generated.jsonl) under `folder`; an existing generated file is kept
    (generation on a CPU takes minutes)."""
    _, tokenizer = model_config_and_tokenizer(model, revision)
    prompts = paragraph_prompts(tokenizer, prompt_tokens=prompt_tokens)[:max_prompts]
    human = write_human_corpus(folder / "human.jsonl", prompts, tokenizer)
    generated = folder / "generated.jsonl"
    if not generated.is_file():
        generate_corpus(generated, prompts, model=model, revision=revision, **gen)
    return human, generated
