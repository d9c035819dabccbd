"""Model B for a model diff (issue 24, item 4): SmolLM2-135M fine-tuned on one clear
domain, with the corpora a crosscoder on A and B is trained and measured on.

The domain is software licence text (legal prose: "Permission is hereby granted...",
"THIS SOFTWARE IS PROVIDED AS IS...", GPL sections, copyright notices): the LICENSE /
COPYING / NOTICE / copyright files of the Python packages here, the Python installation,
/usr/share/common-licenses and /usr/share/doc (Debian's copyright files: of their
machine-readable stanzas only the licence texts). The general corpus is documentation:
CPython's reference topics (saefeat's built-in corpus) and Markdown / reStructuredText
files of the same places that are not licences (at most ~25k characters a package), until
it is as large as the domain. Both are read offline from this machine.

Both are cut into paragraphs (blank lines; a Debian " ." line is one). A paragraph is
kept when it is prose (>= 12 words, letters >= 80% (domain) / 70% (general) of its
non-space characters, <= 5% of its words paths or URLs), when it is new (under 70% of its
5-word shingles seen in a paragraph kept before: licences copy each other, and a
near-copy on both sides of the split would flatter the held-out loss), and for the domain
when it holds >= 2 legal words (licence, warranty, hereby, shall, liability...), for the
general corpus when it holds none of the licence vocabulary. Licence text repeats so much
that this leaves ~0.4M characters (~100k tokens) of it here. Kept paragraphs of one file
are joined back into documents of <= 2,000 characters; a file's folder decides its split
(a quarter held out), so a package's texts never sit on both sides. Written under
bench/.cache/model-diff/ (gitignored), JSONL with "text" and "source" fields:

    domain.jsonl, general.jsonl                  the fine-tune's text / the rest of general
    domain_heldout.jsonl, general_heldout.jsonl  never trained on: the losses below
    mixed.jsonl     every domain document and as many characters of general ones (held-out
                    first), shuffled; each row has "domain": "domain" | "general" and
                    "split": "train" | "heldout" (whether model B was tuned on it)
    corpora.json    what each holds (documents, characters, tokens, source files)

Model A is saefeat's embedded `smollm2-135m` (the folder `embedded_model_dir()` returns).
Model B is A after up to --steps AdamW steps (lr 2e-4, warm-up over the first tenth of the
run, cosine to a tenth, clip 1.0, no weight decay) on batches of 8 contexts of 128 tokens
packed from domain.jsonl the way saefeat packs a harvest (BOS first in each context); all
weights but the tied embedding / unembedding are trained, computed in saefeat's CPU dtype
(bf16 where the CPU has AVX512-BF16 / AMX, ~2x fp32 a step here) with fp32 master weights.
A run stops at --budget-min of training: the schedule follows max(steps done / --steps,
time spent / budget), so on a busy machine fewer steps run, each scheduled as a whole
run's (on 2 shared cores a step took 15-45 s). Saved in fp32 as a transformers folder
model-b/ (with A's tokenizer) and model-b/finetune.json: steps, lr, tokens, seconds, and
the mean next-token loss of A and of B (same dtype) on the same held-out contexts of each
corpus; then saefeat's load_model loads it and its tokenizer is checked to be A's.

    .venv/bin/python bench/finetune_domain.py [--force] [--smoke] [--steps N] [--budget-min M]

Present model-b/finetune.json: nothing is redone (--force redoes the corpora and model).
`--smoke`: 40 files of each kind from site-packages, 3 steps of 2 x 32 tokens, into a
temporary folder; the cache is not touched. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "model-diff"
os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(Path.home() / ".cache" / "saefeat" / "models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from autointerp import log  # noqa: E402

from saefeat.corpus import Document, builtin_python_docs, pack_contexts  # noqa: E402
from saefeat.lm import (  # noqa: E402
    auto_dtype,
    embedded_model_dir,
    load_model,
    model_config_and_tokenizer,
)

# File names of licences: LICENSE, LICENSE.txt, LICENCE-MIT, COPYING.LIB, NOTICE, copyright.
LICENSE_NAME = re.compile(r"(licen[cs]e|copying|notice|copyright)([._-][\w.+-]*)?", re.I)
NOT_TEXT = (".py", ".pyc", ".pyi", ".gz", ".html", ".json", ".so", ".js", ".xml", ".png")
DOC_SUFFIXES = (".md", ".rst")
# Paragraph breaks: blank lines, and Debian copyright's " ." lines.
BREAK = re.compile(r"\r?\n(?:[ \t]*\.?[ \t]*\r?\n)+")
# Words of legal prose: a domain paragraph holds >= LEGAL_MIN of them.
LEGAL = re.compile(
    r"\b(licen[cs]\w*|sublicens\w*|warrant\w*|copyright\w*|liab\w*|permission|permitted|"
    r"redistribut\w*|distribut\w*|notice|rights|terms|conditions|here(in|by|under|of)|"
    r"shall|infring\w*|damages|merchantab\w*|indemn\w*|provided|contributor\w*|"
    r"derivative|tort|negligence|royalty|patent\w*|jurisdiction|waive\w*)\b",
    re.I,
)
LEGAL_MIN = 2
MIN_WORDS = 12  # a paragraph is kept from this many words (a BSD clause has ~20)
# A general paragraph holds none of these (no licence text leaks into it).
LICENSE_VOCAB = re.compile(
    r"licen[cs]|warrant|copyright|liabil|sublicens|merchantab|infring|indemn", re.I
)
# A Debian copyright stanza (machine-readable format): `Files:`, `Copyright:`, `License:`...
DEBIAN_FIELD = re.compile(
    r"(Files|Copyright|License|Comment|Format|Upstream-[\w-]+|Source|"
    r"Disclaimer|Files-Excluded)\s*:"
)
DOC_CHARS = 2000  # documents: kept paragraphs of one file, joined up to this length
HELDOUT_PCT = 25  # share of source folders held out
SOURCE_CAP = 40_000  # characters kept per source file (one huge copyright file is not half)
PACKAGE_CAP = 25_000  # characters of general text per package
NEAR_DUP = 0.7  # a paragraph with this share of its 5-word shingles seen before is dropped


def default_roots() -> list[Path]:
    site = [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    system = [Path("/usr/share/common-licenses"), Path("/usr/share/doc"),
              Path("/usr/lib/python3/dist-packages")]  # fmt: skip
    roots = [*site, Path(sys.base_prefix), *system]
    seen: list[Path] = []
    for r in roots:
        if r.is_dir() and r.resolve() not in seen:
            seen.append(r.resolve())
    return seen


def source_files(roots: list[Path], max_files: int | None = None) -> tuple[list, list]:
    """(licence files, documentation files) under the roots, sorted, each once."""
    licenses: dict[Path, None] = {}
    docs: dict[Path, None] = {}
    for root in roots:
        for folder, subdirs, names in os.walk(root):
            subdirs.sort()
            if "/node_modules" in folder or "/.git" in folder:
                continue
            for name in sorted(names):
                path = Path(folder, name)
                if path.is_symlink() or name.lower().endswith(NOT_TEXT):
                    continue
                if LICENSE_NAME.fullmatch(name):
                    licenses[path] = None
                elif name.lower().endswith(DOC_SUFFIXES) and "licen" not in str(path).lower():
                    docs[path] = None
    lic, doc = list(licenses), list(docs)
    if max_files is not None:
        lic, doc = lic[:max_files], doc[:max_files]
    return lic, doc


def read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in data[:8192] or len(data) > 5_000_000:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def paragraphs(text: str) -> list[str]:
    """The paragraphs of a text, dedented; of a Debian copyright file's stanzas, the
    licence text of a `License:` stanza (its first line dropped), no other stanza."""
    out = []
    for p in BREAK.split(text):
        p = textwrap.dedent(p.strip("\r\n")).strip()
        if DEBIAN_FIELD.match(p):
            if not p.startswith("License:"):
                continue
            p = textwrap.dedent(p.partition("\n")[2]).strip()
        if p:
            out.append(p)
    return out


def is_prose(p: str, letters_min: float) -> bool:
    """Mostly words: >= MIN_WORDS of them, letters the given share of the non-space characters,
    few paths or URLs (file lists, link lists)."""
    chars = len(re.sub(r"\s", "", p))
    words = re.findall(r"[A-Za-z]+", p)
    pieces = p.split()
    paths = sum("/" in w or "://" in w for w in pieces)
    return (
        len(words) >= MIN_WORDS
        and sum(map(len, words)) >= letters_min * chars
        and paths <= 0.05 * len(pieces)
    )


class Shingles:
    """The 5-word shingles of the paragraphs kept so far."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def is_new(self, p: str) -> bool:
        words = re.findall(r"[a-z0-9]+", p.lower())
        grams = {hash(" ".join(words[i : i + 5])) for i in range(max(1, len(words) - 4))}
        if len(grams & self.seen) >= NEAR_DUP * len(grams):
            return False
        self.seen |= grams
        return True


def documents_of(name: str, text: str, keep) -> list[dict]:
    """The kept paragraphs of one source, joined into documents of <= DOC_CHARS."""
    docs: list[dict] = []
    buf: list[str] = []
    total = 0
    for p in paragraphs(text):
        if total >= SOURCE_CAP:
            break
        if not keep(p):
            continue
        if buf and sum(map(len, buf)) + len(p) > DOC_CHARS:
            docs.append({"text": "\n\n".join(buf), "source": name})
            buf = []
        buf.append(p)
        total += len(p)
    if buf:
        docs.append({"text": "\n\n".join(buf), "source": name})
    return docs


def is_heldout(source: str) -> bool:
    """A source's split, from its folder (a package's texts stay on one side)."""
    group = source.rsplit("/", 1)[0] if "/" in source else source.split(":")[0]
    # python-docs topics: by topic name, so the built-in docs are split too.
    if source.startswith("python-docs:"):
        group = source
    digest = hashlib.sha256(group.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PCT


def build_corpora(out: Path, roots: list[Path], tokenizer, max_files: int | None = None) -> dict:
    t0 = time.perf_counter()
    lic_files, doc_files = source_files(roots, max_files)
    log(f"corpora: {len(lic_files)} licence files, {len(doc_files)} doc files")
    seen = Shingles()  # one for both: a paragraph is in one corpus at most

    def keep_domain(p: str) -> bool:
        return is_prose(p, 0.8) and len(LEGAL.findall(p)) >= LEGAL_MIN and seen.is_new(p)

    def keep_general(p: str) -> bool:
        return is_prose(p, 0.7) and not LICENSE_VOCAB.search(p) and seen.is_new(p)

    domain: list[dict] = []
    for path in lic_files:
        if (text := read_text(path)) is not None:
            domain += documents_of(str(path), text, keep_domain)
    general: list[dict] = []
    builtin = list(builtin_python_docs())
    if max_files is not None:
        builtin = builtin[:max_files]
    for doc in builtin:
        general += documents_of(doc.doc_id, doc.text, keep_general)
    domain_chars = sum(len(d["text"]) for d in domain)
    # Documentation files in a fixed shuffled order until general is as large as domain.
    # At most PACKAGE_CAP characters of one package (awscli alone ships ~10k examples).
    rng = random.Random(0)
    rng.shuffle(doc_files)
    per_package: dict[str, int] = {}
    for path in doc_files:
        if _chars(general) >= domain_chars:
            break
        package = _package(path)
        if per_package.get(package, 0) >= PACKAGE_CAP or (text := read_text(path)) is None:
            continue
        docs = documents_of(str(path), text, keep_general)
        per_package[package] = per_package.get(package, 0) + _chars(docs)
        general += docs

    splits = {
        "domain": [d for d in domain if not is_heldout(d["source"])],
        "domain_heldout": [d for d in domain if is_heldout(d["source"])],
        "general": [d for d in general if not is_heldout(d["source"])],
        "general_heldout": [d for d in general if is_heldout(d["source"])],
    }
    # mixed: every domain document and as many characters of general ones (held-out
    # first), shuffled; "split" says which were fine-tuned on.
    mixed = []
    for split in ("domain", "domain_heldout"):
        mixed += [{**r, "domain": "domain", "split": _split(split)} for r in splits[split]]
    n_chars = _chars(mixed)
    taken = 0
    for split in ("general_heldout", "general"):
        rows = list(splits[split])
        random.Random(1).shuffle(rows)
        for row in rows:
            if taken >= n_chars:
                break
            mixed.append({**row, "domain": "general", "split": _split(split)})
            taken += len(row["text"])
    random.Random(2).shuffle(mixed)
    splits["mixed"] = mixed

    out.mkdir(parents=True, exist_ok=True)
    files = {"licence": len(lic_files), "documentation": len(doc_files),
             "python_docs_topics": len(builtin)}  # fmt: skip
    summary: dict = {"roots": [str(r) for r in roots], "files": files}
    for name, rows in splits.items():
        with (out / f"{name}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        summary[name] = {
            "documents": len(rows),
            "chars": _chars(rows),
            "tokens": sum(len(x) for x in tokenizer([r["text"] for r in rows] or [""],
                                                    add_special_tokens=False)["input_ids"]),
            "sources": len({r["source"] for r in rows}),
        }  # fmt: skip
        if name == "mixed":
            for kind in ("domain", "general"):
                part = [r for r in rows if r["domain"] == kind]
                summary[name][f"{kind}_chars"] = _chars(part)
                summary[name][f"{kind}_heldout_chars"] = _chars(
                    [r for r in part if r["split"] == "heldout"]
                )
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "corpora.json").write_text(json.dumps(summary, indent=1) + "\n")
    log("corpora: " + json.dumps({k: v for k, v in summary.items() if k != "roots"}))
    return summary


def _package(path: Path) -> str:
    """The package a documentation file belongs to: the folder under site-packages or
    /usr/share/doc, else its own folder."""
    parts = path.parts
    for anchor in ("site-packages", "dist-packages", "doc"):
        if anchor in parts and parts.index(anchor) + 1 < len(parts) - 1:
            return "/".join(parts[: parts.index(anchor) + 2])
    return str(path.parent)


def _split(name: str) -> str:
    return "heldout" if name.endswith("_heldout") else "train"


def _chars(rows: list[dict]) -> int:
    return sum(len(r["text"]) for r in rows)


def read_jsonl(path: Path) -> list[Document]:
    with path.open() as f:
        rows = [json.loads(line)["text"] for line in f]
    return [Document(f"{path.name}:{i}", text) for i, text in enumerate(rows, 1)]


def contexts(path: Path, tokenizer, ctx_len: int, limit: int | None = None) -> torch.Tensor:
    """A JSONL file packed into contexts the way a saefeat harvest packs it (BOS first)."""
    packed = pack_contexts(iter(read_jsonl(path)), tokenizer, ctx_len=ctx_len,
                           token_budget=10**9, bos="context")  # fmt: skip
    rows = torch.from_numpy(packed.tokens).long()
    if limit is not None and len(rows) > limit:  # spread over the whole file
        rows = rows[torch.linspace(0, len(rows) - 1, limit).long()]
    return rows


@torch.no_grad()
def mean_loss(model, rows: torch.Tensor, batch: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(rows), batch):
        x = rows[i : i + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        n += x[:, 1:].numel()
    return total / n


def lr_at(progress: float, lr: float) -> float:
    """Linear warm-up over the first tenth of the run, then cosine down to lr / 10."""
    if progress < 0.1:
        return lr * max(progress, 0.01) / 0.1
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (progress - 0.1) / 0.9)))


def finetune(args, out: Path, corpora: Path, smoke: bool) -> dict:
    """Model B: A after args.steps steps on domain.jsonl (fewer if they would not fit in
    args.budget_min), written to `out` with finetune.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder_a = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder_a)
    # Computed in saefeat's CPU dtype (bf16 where the CPU runs it fast: ~2x fp32 for a
    # training step here, 3x for a forward), with fp32 master weights in the optimizer.
    dtype = auto_dtype("cpu") if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(folder_a, dtype=torch.float32)
    # The tied embedding / unembedding stays A's: the vocabulary's geometry is shared, and
    # its weight gradient (49152 x 576) is a tenth of a step.
    model.get_input_embeddings().weight.requires_grad_(False)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    master = [p.detach().clone() for _, p in trained]
    frozen = [(p, p.detach().clone()) for p in model.parameters() if not p.requires_grad]
    for p in master:
        p.requires_grad_(True)
    model.to(dtype)
    train = contexts(corpora / "domain.jsonl", tokenizer, args.ctx_len)
    evals = {kind: contexts(corpora / f"{kind}_heldout.jsonl", tokenizer, args.ctx_len,
                            args.eval_contexts) for kind in ("domain", "general")}  # fmt: skip
    log(f"train: {len(train)} contexts of {args.ctx_len}; eval: "
        + ", ".join(f"{k} {len(v)}" for k, v in evals.items()) + f"; {dtype}")  # fmt: skip
    t_eval = time.perf_counter()
    loss_a = {k: mean_loss(model, v, args.batch) for k, v in evals.items()}
    log(f"A: domain loss {loss_a['domain']:.3f}, general loss {loss_a['general']:.3f} "
        f"({time.perf_counter() - t_eval:.0f} s)")  # fmt: skip

    model.train()
    model.config.use_cache = False
    opt = torch.optim.AdamW(master, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95), fused=True)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=gen)
    budget_s = math.inf if smoke else args.budget_min * 60
    pos, step, t0 = 0, 0, time.perf_counter()
    losses: list[float] = []
    progress = 0.0  # of the run: steps done / steps, or time spent / budget if more
    while progress < 1.0:
        if pos + args.batch > len(order):  # a new epoch
            order, pos = torch.randperm(len(train), generator=gen), 0
        x = train[order[pos : pos + args.batch]]
        pos += args.batch
        lr = lr_at(progress, args.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        for m, (_, p) in zip(master, trained, strict=True):
            m.grad = p.grad.float()
            p.grad = None
        torch.nn.utils.clip_grad_norm_(master, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for m, (_, p) in zip(master, trained, strict=True):
                p.copy_(m)
        losses.append(loss.item())
        step += 1
        elapsed = time.perf_counter() - t0
        # A step that would end past the budget is not started.
        progress = max(step / args.steps, (elapsed + elapsed / step) / budget_s)
        if step % 5 == 0 or progress >= 1.0:
            recent = sum(losses[-5:]) / len(losses[-5:])
            log(f"step {step}: loss {recent:.3f}, lr {lr:.2e}, {elapsed / step:.1f} s/step, "
                f"{elapsed:.0f} s, {progress:.0%} done")  # fmt: skip
    total, budget_cut = step, step < args.steps
    seconds = time.perf_counter() - t0
    model.eval()
    model.config.use_cache = True
    loss_b = {k: mean_loss(model, v, args.batch) for k, v in evals.items()}
    log(f"B: domain loss {loss_b['domain']:.3f}, general loss {loss_b['general']:.3f}")

    model.to(torch.float32)  # saved in fp32 like A's folder, from the master weights
    with torch.no_grad():
        for m, (_, p) in zip(master, trained, strict=True):
            p.copy_(m)
        for p, kept in frozen:  # A's own, not rounded to the compute dtype
            p.copy_(kept)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model, master, frozen, opt
    record = {
        "model_a": str(folder_a),
        "steps": total,
        "steps_asked": args.steps,
        "cut_to_budget": budget_cut,
        "budget_min": args.budget_min,
        "lr": args.lr,
        "schedule": "AdamW (0.9, 0.95), no weight decay; linear warm-up over the first 10% "
        "of the run, cosine to lr/10; clip 1.0; the run's progress is max(steps done / "
        "steps asked, time spent / budget)",
        "batch": args.batch,
        "ctx_len": args.ctx_len,
        "tokens": total * args.batch * args.ctx_len,
        "train_contexts": len(train),
        "epochs": round(total * args.batch / len(train), 2),
        "compute_dtype": str(dtype).removeprefix("torch."),
        "trained": "all but the tied embedding / unembedding (A's)",
        "seconds": round(seconds, 1),
        "s_per_step": round(seconds / total, 2),
        "train_loss_first5": round(sum(losses[:5]) / len(losses[:5]), 4),
        "train_loss_last5": round(sum(losses[-5:]) / len(losses[-5:]), 4),
        "eval_contexts": {k: len(v) for k, v in evals.items()},
        "eval_dtype": str(dtype).removeprefix("torch."),
        "domain_loss_a": round(loss_a["domain"], 4),
        "domain_loss_b": round(loss_b["domain"], 4),
        "general_loss_a": round(loss_a["general"], 4),
        "general_loss_b": round(loss_b["general"], 4),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    record.update(check_loads(tmp, folder_a))
    (tmp / "finetune.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return record


def check_loads(folder_b: Path, folder_a: Path) -> dict:
    """saefeat loads B, and A's and B's tokenizers are one (same vocabulary, same ids)."""
    lm = load_model(str(folder_b))
    lm_a_tok = model_config_and_tokenizer(str(folder_a))[1]
    sample = "Permission is hereby granted, free of charge, to any person: def f(x): return x"
    same = (lm.tokenizer.get_vocab() == lm_a_tok.get_vocab()
            and lm.tokenizer(sample)["input_ids"] == lm_a_tok(sample)["input_ids"])  # fmt: skip
    assert same, "model B's tokenizer differs from model A's"
    return {"saefeat_loads": lm.n_layers > 0, "same_tokenizer": same}


def summary_line(record: dict, path: Path) -> dict:
    keys = ("steps", "domain_loss_a", "domain_loss_b", "general_loss_a", "general_loss_b",
            "seconds", "tokens", "same_tokenizer", "saefeat_loads")  # fmt: skip
    return {"model_b": str(path), **{k: record.get(k) for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="3 tiny steps into a temporary folder")
    ap.add_argument("--force", action="store_true", help="rebuild the corpora and model B")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--eval-contexts", type=int, default=32, help="held-out contexts per corpus")
    ap.add_argument(
        "--budget-min",
        type=float,
        default=15.0,
        help="training time at most (the schedule follows it when it binds)",
    )
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="compute dtype (auto: saefeat's on this CPU); fp32 master weights",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.smoke:
        args.steps, args.batch, args.ctx_len, args.eval_contexts = 3, 2, 32, 4
        base = Path(tempfile.mkdtemp(prefix="saefeat-finetune-smoke-"))
        try:
            roots = [Path(p) for p in sys.path if p.endswith("site-packages")]
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(embedded_model_dir())
            build_corpora(base, roots, tok, max_files=40)
            record = finetune(args, base / "model-b", base, smoke=True)
            print(json.dumps(summary_line(record, base / "model-b")), flush=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return

    model_b = CACHE / "model-b"
    done = model_b / "finetune.json"
    if done.is_file() and not args.force:
        log(f"model B exists: {model_b} (--force to redo)")
        print(json.dumps(summary_line(json.loads(done.read_text()), model_b)), flush=True)
        return
    if args.force or not (CACHE / "corpora.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(embedded_model_dir())
        build_corpora(CACHE, default_roots(), tok)
    record = finetune(args, model_b, CACHE, smoke=False)
    log(f"model B: {model_b}")
    print(json.dumps(summary_line(record, model_b)), flush=True)


if __name__ == "__main__":
    main()
