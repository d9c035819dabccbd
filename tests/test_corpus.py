import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from saefeat.corpus import BUILTIN_PYTHON_DOCS, CorpusRoots, iter_documents, pack_contexts
from saefeat.errors import SpecError

NO_ROOTS = CorpusRoots.of([])  # the built-in corpus needs none


@pytest.fixture
def roots(tmp_path) -> CorpusRoots:
    return CorpusRoots.of([tmp_path])


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return AutoTokenizer.from_pretrained(str(tiny_llama))


def test_builtin_corpus_has_documents():
    docs = list(iter_documents(BUILTIN_PYTHON_DOCS, roots=NO_ROOTS))
    assert len(docs) > 50 and all(d.text.strip() for d in docs)


def test_text_jsonl_parquet_and_folder(tmp_path, roots):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"})
    )
    pq.write_table(pa.table({"body": ["three", ""]}), tmp_path / "c.parquet")
    assert [d.text for d in iter_documents(str(tmp_path / "a.txt"), roots=roots)] == ["hello world"]
    assert [
        d.text for d in iter_documents(str(tmp_path / "b.jsonl"), roots=roots, field="body")
    ] == [
        "one",
        "two",
    ]
    assert [
        d.text for d in iter_documents(str(tmp_path / "c.parquet"), roots=roots, field="body")
    ] == ["three"]


def test_bad_corpora_are_named(tmp_path, roots):
    with pytest.raises(SpecError, match="not a readable corpus under the corpus roots"):
        list(iter_documents(str(tmp_path / "missing.txt"), roots=roots))
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(SpecError, match="not UTF-8"):
        list(iter_documents(str(tmp_path / "bin.txt"), roots=roots))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(SpecError, match="bad.jsonl:2"):
        list(iter_documents(str(tmp_path / "bad.jsonl"), roots=roots))
    (tmp_path / "nofield.jsonl").write_text('{"body": "ok"}\n')
    with pytest.raises(SpecError, match="no 'text' field"):
        list(iter_documents(str(tmp_path / "nofield.jsonl"), roots=roots))


def test_empty_corpus_is_refused(tmp_path, roots, tok):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(SpecError, match="fewer than"):
        pack_contexts(
            iter_documents(str(tmp_path / "empty.txt"), roots=roots),
            tok,
            ctx_len=16,
            token_budget=100,
        )


def test_budget_must_be_positive(tok):
    with pytest.raises(SpecError, match="token_budget"):
        pack_contexts(
            iter_documents(BUILTIN_PYTHON_DOCS, roots=NO_ROOTS), tok, ctx_len=16, token_budget=0
        )


@pytest.mark.parametrize("bos", ["context", "document", "none"])
def test_packing_keeps_document_and_offset(tok, bos):
    docs = list(iter_documents(BUILTIN_PYTHON_DOCS, roots=NO_ROOTS))[:20]
    p = pack_contexts(iter(docs), tok, ctx_len=32, token_budget=32 * 40, bos=bos)
    assert p.tokens.shape == (40, 32) and p.tokens.dtype == np.int32
    if bos == "context":
        assert (p.tokens[:, 0] == tok.bos_token_id).all()
    body = 1 if bos == "context" else 0
    for i in range(40):
        d, off = p.doc_index[i], p.doc_offset[i]
        ids = tok(docs[d].text, add_special_tokens=False)["input_ids"]
        if bos == "document":
            ids = [tok.bos_token_id, *ids]
        elif bos == "none" and d > 0:
            ids = [tok.eos_token_id, *ids]
        n = min(8, len(ids) - off)
        assert list(p.tokens[i, body : body + n]) == ids[off : off + n]


def test_sources_mix_in_proportion_to_weights(tmp_path, roots):
    from saefeat.corpus import CorpusReport, mix_sources

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(40):
            (tmp_path / name / f"{i:02d}.txt").write_text(name * 100)
    sources = [(str(tmp_path / "a"), "text", 3.0), (str(tmp_path / "b"), "text", 1.0)]
    report = CorpusReport()
    docs = [
        d.doc_id
        for _, d in zip(range(40), mix_sources(sources, roots=roots, report=report), strict=False)
    ]
    assert docs == [
        d.doc_id for _, d in zip(range(40), mix_sources(sources, roots=roots), strict=False)
    ]
    assert sum(d.startswith("0/") for d in docs) == 30  # 3:1 by text
    assert report.by_source == {str(tmp_path / "a"): 30, str(tmp_path / "b"): 10}
    # A source that runs out drops out; the rest go on.
    assert len(list(mix_sources(sources, roots=roots))) == 80


def test_bad_documents_skip_or_fail_per_policy(tmp_path, roots):
    from saefeat.corpus import CorpusReport

    (tmp_path / "good.txt").write_text("fine text")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01binary")
    (tmp_path / "rows.jsonl").write_bytes(b'{"text": "ok"}\n\xff\xfe\nnot json\n')
    with pytest.raises(SpecError, match="on_bad_document='skip'"):
        list(iter_documents(str(tmp_path), roots=roots))
    report = CorpusReport()
    docs = list(iter_documents(str(tmp_path), roots=roots, report=report, on_bad="skip"))
    assert sorted(d.text for d in docs) == ["fine text", "ok"]
    assert (report.undecodable, report.malformed, report.documents) == (3, 1, 2)


def test_storage_dtype_must_be_storable():
    from pydantic import ValidationError

    from saefeat.specs import HarvestSpec

    with pytest.raises(ValidationError, match="storage_dtype"):
        HarvestSpec(hooks=["blocks.0.hook_resid_post"], storage_dtype="int8")


def test_plain_text_splits_at_blank_lines_only_when_asked(tmp_path, roots):
    """A harvest reads a plain-text file whole, as it always has (its set id and tokens
    stay); text_documents="paragraphs" (a contrast's harvests) makes each paragraph a
    document, split at lines holding only whitespace."""
    from saefeat.corpus import count_documents
    from saefeat.specs import HarvestSpec

    text = "Title\nline two\n\n  indented para\r\n \t\r\n\n\nlast one\n"
    (tmp_path / "p.txt").write_text(text)
    (tmp_path / "p.jsonl").write_text('{"text": "a\\n\\nb"}\n')
    path = str(tmp_path / "p.txt")
    assert [d.text for d in iter_documents(path, roots=roots)] == [text]
    split = list(iter_documents(path, roots=roots, text_documents="paragraphs"))
    assert [d.text for d in split] == ["Title\nline two", "  indented para", "last one"]
    assert [d.doc_id for d in split] == ["p.txt:p1", "p.txt:p2", "p.txt:p3"]
    # JSONL rows are documents either way (no split inside a row).
    jsonl = iter_documents(str(tmp_path / "p.jsonl"), roots=roots, text_documents="paragraphs")
    assert [d.text for d in jsonl] == ["a\n\nb"]
    sources = [(path, "text", 1.0)]
    assert count_documents(sources, roots=roots) == 1
    assert count_documents(sources, roots=roots, text_documents="paragraphs") == 3
    assert count_documents(sources, roots=roots, text_documents="paragraphs", at_most=2) == 2
    hook = ["blocks.1.hook_resid_post"]
    plain = HarvestSpec(hooks=hook, corpus=[path])
    assert plain.set_id() == HarvestSpec(hooks=hook, corpus=[path], text_documents="file").set_id()
    assert plain.set_id() != HarvestSpec(hooks=hook, corpus=[path],
                                         text_documents="paragraphs").set_id()  # fmt: skip


def test_parquet_is_read_batch_by_batch(tmp_path, roots):
    rows = [f"row {i}" for i in range(2500)]
    pq.write_table(pa.table({"text": rows, "n": list(range(2500))}), tmp_path / "big.parquet",
                   row_group_size=1000)  # fmt: skip
    docs = list(iter_documents(str(tmp_path / "big.parquet"), roots=roots))
    assert [d.text for d in docs] == rows
    assert docs[-1].doc_id == "big.parquet:2499"
    with pytest.raises(SpecError, match="no column 'body'"):
        list(iter_documents(str(tmp_path / "big.parquet"), roots=roots, field="body"))


def test_saved_dataset_folder_is_read_batch_by_batch(tmp_path, roots):
    """A `datasets` save_to_disk folder: .arrow stream files, read with pyarrow."""
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    for part, rows in enumerate((["a", "b", "c"], ["d", None])):
        table = pa.table({"text": rows})
        with pa.OSFile(str(folder / f"data-{part:05d}.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                for batch in table.to_batches(max_chunksize=2):
                    writer.write_batch(batch)
    docs = list(iter_documents(str(folder), roots=roots))
    assert [d.text for d in docs] == ["a", "b", "c", "d"]  # the empty row is left out
    assert [d.doc_id for d in docs] == ["saved:0", "saved:1", "saved:2", "saved:3"]
    with pytest.raises(SpecError, match="no column 'body'"):
        list(iter_documents(str(folder), roots=roots, field="body"))
