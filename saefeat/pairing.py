"""Model diffing's one condition: the two models of a paired harvest read the same tokens.

A paired harvest (HarvestSpec.paired_model) fills one activation set per model, each
packed with its own model's tokenizer; a crosscoder then reads row i of both sets as the
same token. That holds only when the two tokenizers encode alike: the same vocabulary
(token -> id), the same BOS and EOS ids (packing puts them between documents), and a probe
text encoded to the same ids. `check_pairing` is that check, from each model's config and
tokenizer only (no weights): at admission over HTTP (saefeat/admission.py), in the CLI
before any job row is written, and when the job starts. Once both sets are harvested the
job compares their token arrays as well (`check_same_tokens`). Every refusal is a
SpecError naming `paired_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from saefeat.errors import SpecError
from saefeat.lm import model_config_and_tokenizer
from saefeat.specs import HarvestSpec

FIELD = "paired_model"
# Code, prose, digits, whitespace runs and non-ASCII: where merges and normalisers differ.
PROBE = ("def f(x):\n    return x ** 2  # square\n\nThe quick brown fox, 1234 résumé "
         "naïve 東京 — \t tabs  and   spaces.\n")  # fmt: skip
SHOWN = 3  # tokens named when vocabularies differ


def _same_model(a: str, b: str) -> bool:
    """The same name, or two paths to one folder or file."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _named(model: str, revision: str | None) -> str:
    return repr(model) if revision is None else f"{model!r} at revision {revision!r}"


def _tokens(names: list[str]) -> str:
    shown = ", ".join(map(repr, sorted(names)[:SHOWN]))
    return shown + (", ..." if len(names) > SHOWN else "")


def tokenizer_differences(a: Any, b: Any) -> list[str]:
    """What tells two tokenizers apart for packing (empty: they encode alike); `a` is
    called the model's and `b` the paired model's."""
    out = []
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        only_a, only_b = sorted(va.keys() - vb.keys()), sorted(vb.keys() - va.keys())
        moved = sorted(t for t in va.keys() & vb.keys() if va[t] != vb[t])
        parts = [f"{len(va)} vs {len(vb)} tokens"]
        if only_a:
            parts.append(f"{len(only_a)} only in the model's ({_tokens(only_a)})")
        if only_b:
            parts.append(f"{len(only_b)} only in the paired model's ({_tokens(only_b)})")
        if moved:
            parts.append(f"{len(moved)} with other ids ({_tokens(moved)})")
        out.append("the vocabularies differ: " + ", ".join(parts))
    for name in ("bos_token_id", "eos_token_id"):
        ia, ib = getattr(a, name, None), getattr(b, name, None)
        if ia != ib:
            out.append(f"{name} {ia} vs {ib}")
    if not out:
        ea = a(PROBE, add_special_tokens=False)["input_ids"]
        eb = b(PROBE, add_special_tokens=False)["input_ids"]
        if list(ea) != list(eb):
            out.append(f"the same text encodes to other ids ({len(ea)} vs {len(eb)} tokens)")
    return out


def check_pairing(spec: HarvestSpec) -> None:
    """Refuse a paired harvest whose models are one model, or whose tokenizers differ
    (SpecError naming `paired_model`); nothing for an unpaired spec. Loads the two
    configs and tokenizers, never the weights."""
    if spec.paired_model is None:
        return
    model, paired = _named(spec.model, spec.revision), _named(spec.paired_model,
                                                              spec.paired_revision)  # fmt: skip
    if _same_model(spec.model, spec.paired_model) and spec.revision == spec.paired_revision:
        raise SpecError(f"{paired} is the model itself: the same model twice; pair it with "
                        "another model or another revision", field=FIELD)  # fmt: skip
    _, mine = model_config_and_tokenizer(spec.model, spec.revision)
    try:
        _, theirs = model_config_and_tokenizer(spec.paired_model, spec.paired_revision)
    except SpecError as e:
        raise SpecError(e.message, field=FIELD) from None
    differs = tokenizer_differences(mine, theirs)
    if differs:
        raise SpecError(f"{paired} does not share the tokenizer of {model}: "
                        f"{'; '.join(differs)}. A paired harvest reads identical tokens "
                        "through both models", field=FIELD)  # fmt: skip


def token_difference(a: Any, b: Any, contexts: int | None = None) -> str | None:
    """Where two sets' (ActivationSets') token arrays first differ, compared a slice of
    contexts at a time; None when they are identical."""
    shape_a, shape_b = (a.n_contexts, a.ctx_len), (b.n_contexts, b.ctx_len)
    if shape_a != shape_b:
        return f"{shape_a[0]}x{shape_a[1]} vs {shape_b[0]}x{shape_b[1]} contexts x tokens"
    step = contexts or max(1, (1 << 22) // max(1, a.ctx_len))
    for c0 in range(0, a.n_contexts, step):
        ta, tb = a.tokens(c0, c0 + step), b.tokens(c0, c0 + step)
        if not np.array_equal(ta, tb):
            rows = np.flatnonzero((np.asarray(ta) != np.asarray(tb)).any(axis=1))
            return f"context {c0 + int(rows[0])} differs first"
    return None


def check_same_tokens(spec: HarvestSpec, a: Any, b: Any, contexts: int | None = None) -> None:
    """The two sets of a paired harvest (ActivationSets) hold identical token arrays;
    else a SpecError naming `paired_model`."""
    where = token_difference(a, b, contexts)
    if where is not None:
        raise SpecError(f"sets {a.id} ({_named(spec.model, spec.revision)}) and {b.id} "
                        f"({_named(spec.paired_model, spec.paired_revision)}) hold other "
                        f"tokens: {where}; a paired harvest needs one tokenizer",
                        field=FIELD)  # fmt: skip
