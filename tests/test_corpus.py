import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from saefeat.corpus import BUILTIN_PYTHON_DOCS, iter_documents, pack_contexts
from saefeat.errors import SpecError


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return AutoTokenizer.from_pretrained(str(tiny_llama))


def test_builtin_corpus_has_documents():
    docs = list(iter_documents(BUILTIN_PYTHON_DOCS))
    assert len(docs) > 50 and all(d.text.strip() for d in docs)


def test_text_jsonl_parquet_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"})
    )
    pq.write_table(pa.table({"body": ["three", ""]}), tmp_path / "c.parquet")
    assert [d.text for d in iter_documents(str(tmp_path / "a.txt"))] == ["hello world"]
    assert [d.text for d in iter_documents(str(tmp_path / "b.jsonl"), field="body")] == [
        "one",
        "two",
    ]
    assert [d.text for d in iter_documents(str(tmp_path / "c.parquet"), field="body")] == ["three"]


def test_bad_corpora_are_named(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        list(iter_documents(str(tmp_path / "missing.txt")))
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(SpecError, match="not UTF-8"):
        list(iter_documents(str(tmp_path / "bin.txt")))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(SpecError, match="bad.jsonl:2"):
        list(iter_documents(str(tmp_path / "bad.jsonl")))
    (tmp_path / "nofield.jsonl").write_text('{"body": "ok"}\n')
    with pytest.raises(SpecError, match="no 'text' field"):
        list(iter_documents(str(tmp_path / "nofield.jsonl")))


def test_empty_corpus_is_refused(tmp_path, tok):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(SpecError, match="fewer than"):
        pack_contexts(
            iter_documents(str(tmp_path / "empty.txt")), tok, ctx_len=16, token_budget=100
        )


def test_budget_must_be_positive(tok):
    with pytest.raises(SpecError, match="token_budget"):
        pack_contexts(iter_documents(BUILTIN_PYTHON_DOCS), tok, ctx_len=16, token_budget=0)


@pytest.mark.parametrize("bos", ["context", "document", "none"])
def test_packing_keeps_document_and_offset(tok, bos):
    docs = list(iter_documents(BUILTIN_PYTHON_DOCS))[:20]
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
