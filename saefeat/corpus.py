"""Corpora: read documents from files or the built-in corpus, and pack them into contexts.

Every context keeps the id of the document it starts in and the token offset there, so
an example in the catalog can always be traced back to its source text.

What a document is: a JSONL line, a Parquet or saved-dataset row, a builtin topic, and a
plain-text file (.txt, .md, ...) whole (`text_documents="file"`, the default). With
`text_documents="paragraphs"` a plain-text file is split into documents at blank lines
(a line holding only whitespace): each paragraph is a document `<file>:p<k>` (k from 1).
Paragraph documents go into the stream back to back like JSONL rows, so the blank lines
between them are not tokens of it: that changes a harvest's tokens and document ids,
which is why it is a HarvestSpec field of its own (hashed into the set id only when
set) and not the default. A contrast (saefeat/analysis/contrast_corpora.py) harvests its
corpora with it, because its statistics count documents.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal

import numpy as np

from saefeat.errors import SpecError
from saefeat.paths import BUILTIN_PYTHON_DOCS, CorpusRoots

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
BosPolicy = Literal["context", "document", "none"]
BadDocumentPolicy = Literal["skip", "fail"]
TextDocuments = Literal["file", "paragraphs"]
# A blank line: a line break, then lines holding only whitespace, then a line break.
PARAGRAPH_BREAK = re.compile(r"\r?\n(?:[ \t\f\v]*\r?\n)+")


@dataclass
class Document:
    doc_id: str
    text: str


@dataclass
class CorpusReport:
    """What reading a corpus skipped, for the job record."""

    documents: int = 0
    empty: int = 0
    undecodable: int = 0  # binary or non-UTF-8 documents skipped (on_bad_document="skip")
    malformed: int = 0  # JSONL lines that are not JSON objects, skipped the same way
    by_source: dict[str, int] = dc_field(default_factory=dict)  # documents used per source

    def as_dict(self) -> dict:
        return asdict(self)


class _BadDocument(Exception):
    """A document that cannot be read as text; the policy decides what happens."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # the CorpusReport counter it goes to


def builtin_python_docs() -> Iterator[Document]:
    """CPython's reference documentation topics (pydoc_data), ~113k SmolLM2 tokens."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"python-docs:{name}", topics[name])


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "binary file (NUL bytes)")
    return data.decode("utf-8")


def split_paragraphs(text: str) -> list[str]:
    """The paragraphs of a plain text: the pieces between blank lines without the line
    breaks at their ends (indentation kept), those holding only whitespace left out."""
    return [p.strip("\r\n") for p in PARAGRAPH_BREAK.split(text) if p.strip()]


def _text_documents(path: Path, split: TextDocuments) -> Iterator[Document]:
    text = _read_text(path)
    paragraphs = split_paragraphs(text) if split == "paragraphs" else []
    if not paragraphs:  # whole, or nothing but whitespace (counted as one empty document)
        yield Document(path.name, text)
        return
    for k, paragraph in enumerate(paragraphs, 1):
        yield Document(f"{path.name}:p{k}", paragraph)


def _jsonl_documents(path: Path, field: str) -> Iterator[Document | _BadDocument]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield _BadDocument(f"{path}:{lineno} is not UTF-8 text", "undecodable")
                continue
            except json.JSONDecodeError as e:
                yield _BadDocument(f"{path}:{lineno} is not a JSON line: {e}", "malformed")
                continue
            if not isinstance(row, dict) or field not in row:
                raise SpecError(f"{path}:{lineno} has no {field!r} field", field="corpus")
            yield Document(f"{path.name}:{lineno}", str(row[field]))


def _parquet_documents(path: Path, field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    # Batch by batch: a reader that stops early (a contrast counting documents) reads
    # little of a large file.
    table = pq.ParquetFile(path)
    names = table.schema_arrow.names
    if field not in names:
        raise SpecError(f"{path} has no column {field!r}; columns: {names}", field="corpus")
    i = 0
    for batch in table.iter_batches(columns=[field]):
        for text in batch.column(0).to_pylist():
            yield Document(f"{path.name}:{i}", text or "")
            i += 1


def _hf_disk_documents(
    path: Path, field: str, confine: Callable[[Path], Path]
) -> Iterator[Document]:
    """A `datasets.Dataset.save_to_disk` folder, read with pyarrow (no `datasets` needed)."""
    import pyarrow as pa

    files = [confine(f) for f in sorted(path.glob("*.arrow"))]
    if not files:
        raise SpecError(f"{path} holds no .arrow files of a saved dataset", field="corpus")
    row = 0
    for f in files:
        with pa.memory_map(str(f)) as src:
            reader = pa.ipc.open_stream(src)
            column = reader.schema.get_field_index(field)
            if column < 0:
                raise SpecError(f"{f} has no column {field!r}", field="corpus")
            for batch in reader:  # batch by batch, as for Parquet
                for text in batch.column(column).to_pylist():
                    yield Document(f"{path.name}:{row}", text or "")
                    row += 1


def iter_documents(
    source: str,
    *,
    roots: CorpusRoots,
    field: str = "text",
    report: CorpusReport | None = None,
    on_bad: BadDocumentPolicy = "fail",
    text_documents: TextDocuments = "file",
) -> Iterator[Document]:
    """Documents of one source: `builtin:python-docs`, a file, or a folder of files.

    A path must resolve under `roots`, and so must every file found in a folder
    (saefeat/paths.py). Binary or non-UTF-8 documents (and malformed JSONL lines) fail
    with the file named, or with on_bad="skip" are counted in `report` and left out.
    `text_documents`: a plain-text file is one document ("file") or one per paragraph,
    split at blank lines ("paragraphs"; the module's docstring).
    """
    report = report if report is not None else CorpusReport()
    if source == BUILTIN_PYTHON_DOCS:
        docs: Iterator[Document] = builtin_python_docs()
    else:
        path = roots.resolve(source)
        confine = lambda p: roots.check_found(p, source)  # noqa: E731
        docs = _path_documents(path, field, report, confine, text_documents)
    for doc in docs:
        if isinstance(doc, _BadDocument):
            if on_bad == "fail":
                raise SpecError(
                    f"{doc}; set on_bad_document='skip' to skip such documents", field="corpus"
                )
            setattr(report, doc.kind, getattr(report, doc.kind) + 1)
            continue
        if not doc.text.strip():
            report.empty += 1
            continue
        report.documents += 1
        yield doc


def _path_documents(
    path: Path,
    field: str,
    report: CorpusReport,
    confine: Callable[[Path], Path],
    text_documents: TextDocuments = "file",
) -> Iterator[Document | _BadDocument]:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            yield from _hf_disk_documents(path, field, confine)
            return
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            yield from _path_documents(confine(child), field, report, confine, text_documents)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_documents(path, field)
    elif suffix == ".parquet":
        yield from _parquet_documents(path, field)
    else:
        try:
            yield from _text_documents(path, text_documents)
        except UnicodeDecodeError:
            yield _BadDocument(
                f"{path} is not UTF-8 text (binary or another encoding)", "undecodable"
            )
        except OSError as e:
            raise SpecError(f"corpus file {path} cannot be read: {e}", field="corpus") from e


def mix_sources(
    sources: list[tuple[str, str, float]],
    *,
    roots: CorpusRoots,
    report: CorpusReport | None = None,
    on_bad: BadDocumentPolicy = "fail",
    text_documents: TextDocuments = "file",
) -> Iterator[Document]:
    """Interleave documents of several (path, field, weight) sources, deterministically.

    Each next document comes from the source whose text so far (in characters, a stand-in
    for tokens that needs no tokenizer) is smallest relative to its weight, so the mixed
    stream holds text in proportion to the weights. A source that runs out drops out and
    the rest go on. Ties go to the earlier source. Document ids get a `<source #>/` prefix
    when there are several sources, so ids stay unique.
    """
    report = report if report is not None else CorpusReport()
    read = dict(roots=roots, report=report, on_bad=on_bad, text_documents=text_documents)
    if len(sources) == 1:
        path, fld, _ = sources[0]
        for doc in iter_documents(path, field=fld, **read):
            report.by_source[path] = report.by_source.get(path, 0) + 1
            yield doc
        return
    iters = [iter_documents(p, field=f, **read) for p, f, _ in sources]
    chars = [0] * len(sources)
    live = list(range(len(sources)))
    while live:
        i = min(live, key=lambda j: (chars[j] / sources[j][2], j))
        doc = next(iters[i], None)
        if doc is None:
            live.remove(i)
            continue
        chars[i] += len(doc.text)
        path = sources[i][0]
        report.by_source[path] = report.by_source.get(path, 0) + 1
        yield Document(f"{i}/{doc.doc_id}", doc.text)


def count_documents(
    sources: list[tuple[str, str, float]],
    *,
    roots: CorpusRoots,
    on_bad: BadDocumentPolicy = "fail",
    text_documents: TextDocuments = "file",
    at_most: int | None = None,
) -> int:
    """The non-empty documents of the sources, counted no further than `at_most` (a check
    that needs a few reads no more of a large corpus than it must). Reading errors are
    the reader's (SpecError naming the file)."""
    docs = mix_sources(sources, roots=roots, on_bad=on_bad, text_documents=text_documents)
    n = 0
    for _ in docs:
        n += 1
        if at_most is not None and n >= at_most:
            break
    return n


@dataclass
class PackedContexts:
    tokens: np.ndarray  # int32 [n_contexts, ctx_len]
    doc_index: np.ndarray  # int32 [n_contexts]: the document each context starts in
    doc_offset: np.ndarray  # int32 [n_contexts]: that document's token offset
    doc_ids: list[str]  # document names, indexed by doc_index
    report: CorpusReport


def pack_contexts(
    documents: Iterator[Document],
    tokenizer,
    *,
    ctx_len: int,
    token_budget: int,
    bos: BosPolicy = "context",
    report: CorpusReport | None = None,
) -> PackedContexts:
    """Tokenize documents and cut the stream into `ctx_len` contexts until the budget is met.

    bos="context": every context begins with BOS (SAELens's prepend_bos);
    bos="document": BOS before each document, the stream cut anywhere;
    bos="none": documents back to back, separated by EOS when the tokenizer has one.
    """
    if ctx_len < 2:
        raise SpecError(f"ctx_len must be at least 2, got {ctx_len}", field="ctx_len")
    if token_budget <= 0:
        raise SpecError(f"token_budget must be > 0, got {token_budget}", field="token_budget")
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        bos_id = tokenizer.eos_token_id
    if bos != "none" and bos_id is None:
        raise SpecError("the tokenizer has no BOS or EOS token; use bos='none'", field="bos")
    body = ctx_len - 1 if bos == "context" else ctx_len
    n_wanted = max(1, -(-token_budget // ctx_len))

    rows: list[np.ndarray] = []
    starts: list[tuple[int, int]] = []
    doc_ids: list[str] = []
    buf: list[int] = []  # pending tokens of the stream
    # (start in buf, doc index) of each document run among the pending tokens
    buf_origin: list[tuple[int, int]] = []
    for doc in documents:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        d = len(doc_ids)
        doc_ids.append(doc.doc_id)
        if bos == "document":
            ids = [bos_id, *ids]
        elif bos == "none" and tokenizer.eos_token_id is not None and buf:
            ids = [tokenizer.eos_token_id, *ids]
        buf_origin.append((len(buf), d))
        buf.extend(ids)
        pos = 0  # cut from a cursor and compact once per document: linear in the stream
        while len(buf) - pos >= body and len(rows) < n_wanted:
            starts.append(_origin_at(buf_origin, pos))
            chunk = buf[pos : pos + body]
            rows.append(np.asarray([bos_id, *chunk] if bos == "context" else chunk, np.int32))
            pos += body
        buf = buf[pos:]
        buf_origin = _shift(buf_origin, pos)
        if len(rows) >= n_wanted:
            break
    if not rows:
        raise SpecError(
            f"the corpus holds fewer than {body} tokens, too few for one context of "
            f"ctx_len={ctx_len}",
            field="corpus",
        )
    return PackedContexts(
        tokens=np.stack(rows),
        doc_index=np.asarray([s[0] for s in starts], np.int32),
        doc_offset=np.asarray([s[1] for s in starts], np.int32),
        doc_ids=doc_ids,
        report=report or CorpusReport(),
    )


def _origin_at(origins: list[tuple[int, int]], pos: int) -> tuple[int, int]:
    """(doc index, offset in that doc) of stream position `pos`, given run starts."""
    start, doc = origins[0]
    for s, d in origins:
        if s > pos:
            break
        start, doc = s, d
    return doc, pos - start


def _shift(origins: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """Drop `n` tokens from the stream's front, keeping the run that now covers index 0."""
    shifted = [(s - n, d) for s, d in origins]
    keep = [o for o in shifted if o[0] > 0]
    covering = [o for o in shifted if o[0] <= 0]
    return ([covering[-1]] if covering else []) + keep
