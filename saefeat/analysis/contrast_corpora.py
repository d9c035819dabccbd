"""A contrast of corpora given as text sources (`a_corpus`, `b_corpus`): what each side's
harvest is, and the checks that refuse a side before anything is harvested.

A side's harvest takes the SAE's model and hook, and the revision, dtype, context length
and BOS rule of the set the SAE was trained on (defaults for an imported SAE), with the
spec's `token_budget`. It reads plain text with `text_documents="paragraphs"`: a
plain-text file is split into documents at blank lines (saefeat/corpus.py), because a
contrast's statistics and classifier compare documents and a whole file is one. JSONL,
Parquet and saved-dataset rows are documents as in any harvest.

Two checks, both before any harvest, each a SpecError naming the side's corpus field:

- `check_corpus_documents`: the side's sources hold at least MIN_DOCUMENTS non-empty
  documents. It reads no further than that and needs no tokenizer, so admission runs it
  on the API's request (a one-document plain-text file is a 422 at once).
- `check_packed_documents`: the documents as the contrast will count them. A document
  counts when a context starts in it (saefeat/analysis/contrast_docs.py: shorter ones
  join the one before), so this packs the side with the model's tokenizer, as the
  harvest will, and counts the documents its contexts start in; it packs the first
  PROBE_CONTEXTS contexts, and the whole budget only when those are too few. The run
  (workers/contrast.py) checks every side so before it harvests the first.
"""

from __future__ import annotations

import numpy as np

from saefeat.analysis.contrast_docs import MIN_DOCUMENTS
from saefeat.config import Settings
from saefeat.corpus import count_documents, mix_sources, pack_contexts
from saefeat.errors import SpecError
from saefeat.paths import CorpusRoots
from saefeat.sae.base import SAEConfig
from saefeat.specs import ContrastSpec, HarvestSpec
from saefeat.storage.activations import STATUS_COMPLETE, open_set

PROBE_CONTEXTS = 64  # contexts packed first when counting a side's documents
# What a side's harvest copies from the SAE's training set's spec.
TRAINED_SETTINGS = ("revision", "model_dtype", "ctx_len", "bos", "contexts_per_shard",
                    "storage_dtype")  # fmt: skip
TOO_FEW = (
    "a contrast compares documents and needs at least {n} a side: give plain text with "
    "paragraphs separated by blank lines, a folder of files, or a JSONL or Parquet file "
    "with a document a row"
)


def _sources(spec: ContrastSpec | HarvestSpec, field: str) -> list[tuple[str, str, float]]:
    return [(s.path, s.field, s.weight) for s in getattr(spec, field)]


def _trained_spec(settings: Settings, cfg: SAEConfig) -> dict:
    """The spec of the set the SAE was trained on ({} for an imported SAE, or a deleted
    set: the harvest's defaults)."""
    if not cfg.activation_set:
        return {}
    try:
        return dict(open_set(settings.activations_dir, cfg.activation_set).spec)
    except Exception:
        return {}


def side_harvest(spec: ContrastSpec, side: str, cfg: SAEConfig, settings: Settings) -> HarvestSpec:
    """The harvest of a corpus side: the SAE's model and hook, its training set's
    settings, plain text split into paragraph documents."""
    field = f"{side}_corpus"
    if not cfg.model or not cfg.hook:
        raise SpecError(
            f"SAE {spec.sae!r} records no model or hook to harvest {field} with; harvest the "
            f"corpus yourself and give its activation set as {side}",
            field=field,
        )
    trained = _trained_spec(settings, cfg)
    return HarvestSpec(
        model=cfg.model,
        hooks=[cfg.hook],
        corpus=getattr(spec, field),
        token_budget=spec.token_budget,
        text_documents="paragraphs",
        device=spec.device,
        **{k: trained[k] for k in TRAINED_SETTINGS if k in trained},
    )


def check_corpus_documents(spec: ContrastSpec, side: str, settings: Settings) -> None:
    """At least MIN_DOCUMENTS non-empty documents in the side's sources (plain text split
    at blank lines), read no further than that; reading errors name the side too."""
    field = f"{side}_corpus"
    try:
        n = count_documents(
            _sources(spec, field),
            roots=CorpusRoots.of(settings.corpus_root_paths),
            text_documents="paragraphs",
            at_most=MIN_DOCUMENTS,
        )
    except SpecError as e:
        raise SpecError(e.message, field=field) from None
    if n < MIN_DOCUMENTS:
        what = "no document" if n == 0 else "one document"
        raise SpecError(
            f"corpus {side.upper()} holds {what}; {TOO_FEW.format(n=MIN_DOCUMENTS)}",
            field=field,
        )


def is_harvested(settings: Settings, harvest: HarvestSpec) -> bool:
    try:
        return open_set(settings.activations_dir, harvest.set_id()).status == STATUS_COMPLETE
    except Exception:  # not there (or unreadable): it will be harvested
        return False


def check_packed_documents(harvest: HarvestSpec, settings: Settings, field: str) -> int:
    """The documents the side's contexts start in, as its harvest will pack them (at
    least MIN_DOCUMENTS, else a SpecError naming `field`); the number found."""
    from saefeat.lm import model_config_and_tokenizer

    _, tokenizer = model_config_and_tokenizer(harvest.model, harvest.revision)
    roots = CorpusRoots.of(settings.corpus_root_paths)
    probe = min(harvest.token_budget, PROBE_CONTEXTS * harvest.ctx_len)
    for budget in sorted({probe, harvest.token_budget}):
        docs = mix_sources(_sources(harvest, "corpus"), roots=roots,
                           on_bad=harvest.on_bad_document,
                           text_documents=harvest.text_documents)  # fmt: skip
        try:
            packed = pack_contexts(docs, tokenizer, ctx_len=harvest.ctx_len,
                                   token_budget=budget, bos=harvest.bos)  # fmt: skip
        except SpecError as e:
            raise SpecError(e.message, field=field) from None
        found = len(np.unique(packed.doc_index))
        if found >= MIN_DOCUMENTS:
            return found
    n_ctx = len(packed.doc_index)
    raise SpecError(
        f"corpus {field[0].upper()} packs into {n_ctx} context(s) of {harvest.ctx_len} tokens "
        f"that start in {found} document(s), and a document counts only when a context "
        f"starts in it (a shorter one joins the one before); {TOO_FEW.format(n=MIN_DOCUMENTS)}"
        ", with more or longer documents",
        field=field,
    )


def check_before_harvest(
    spec: ContrastSpec, cfg: SAEConfig, settings: Settings
) -> dict[str, HarvestSpec]:
    """Each corpus side's harvest, every side checked (`check_packed_documents`, skipped
    for a side whose set is harvested already) before any is harvested."""
    harvests = {side: side_harvest(spec, side, cfg, settings) for side in spec.corpus_sides()}
    for side, harvest in harvests.items():
        if not is_harvested(settings, harvest):
            check_packed_documents(harvest, settings, f"{side}_corpus")
    return harvests
