"""Documents cut into chunks: local or object-storage text and Markdown files, PDF text too.

The cutting is semantic-text-splitter's (a small, well-kept Rust library with Python wheels
and no dependencies): it fills chunks up to a size in characters at the largest boundary
that fits (sections and paragraphs, then sentences, then words), with an overlap between
neighbours, and for Markdown it keeps headings with their sections. PDF-extracted text
(pdftotext and the like) is plain text whose pages are separated by form feeds: a page
break is read as a paragraph break.

A chunk's id is its file (relative to the source path) and its number in the file, so a
rerun over the same files makes the same chunks, and the writer's exact resume holds.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from kdist import storage
from kdist.data import files
from kdist.errors import UsageError

MARKDOWN_SUFFIXES = (".md", ".markdown")


def plan(path: str) -> list[dict[str, Any]]:
    """One read unit per document file (a file, or every document file under a directory)."""
    return files.plan(path, "documents")


def chunk_text(text: str, markdown: bool, size: int, overlap: int) -> list[str]:
    """The text as chunks of at most `size` characters, neighbours overlapping by up to
    `overlap`; blank chunks are dropped."""
    from semantic_text_splitter import MarkdownSplitter, TextSplitter

    splitter = (MarkdownSplitter if markdown else TextSplitter)(size, overlap=overlap, trim=True)
    return _with_stubs_joined([chunk for chunk in splitter.chunks(text.replace("\f", "\n\n")) if chunk.strip()], size)


def _with_stubs_joined(chunks: list[str], size: int) -> list[str]:
    """A stub (under a tenth of the size: a heading whose section did not fit beside it)
    joins the chunk after it, so no question is asked about a heading alone."""
    joined: list[str] = []
    carry = ""
    for chunk in chunks:
        chunk = f"{carry}\n\n{chunk}" if carry else chunk
        carry = chunk if len(chunk) < size // 10 else ""
        if not carry:
            joined.append(chunk)
    if carry:
        joined.append(carry)
    return joined


def read_chunks(unit: dict[str, Any], root: str, size: int, overlap: int) -> list[dict[str, Any]]:
    """The chunks of one document file as item rows: id, where, text."""
    uri = unit["path"]
    try:
        text = storage.read_text(uri)
    except UnicodeDecodeError as err:
        raise UsageError(f"{uri}: not UTF-8 text (byte {err.start}); convert it (PDFs: extract their text first, e.g. pdftotext)") from None
    name = _relative(uri, root)
    chunks = chunk_text(text, uri.endswith(MARKDOWN_SUFFIXES), size, overlap)
    return [{"id": f"{name}#{index}", "where": f"{uri} chunk {index + 1}", "text": chunk} for index, chunk in enumerate(chunks)]


def document_of(chunk_id: str) -> str:
    """The document a chunk id (read_chunks: "<document>#<index>") comes from."""
    return chunk_id.rsplit("#", 1)[0]


def _relative(uri: str, root: str) -> str:
    if uri == root:
        return uri.rstrip("/").rsplit("/", 1)[-1]
    return uri[len(root) :].lstrip("/")


def chunk_items(units: pa.Table, root: str, size: int, overlap: int, schema: pa.Schema) -> pa.Table:
    """A Ray Data UDF: document units -> chunk item rows."""
    rows = [row for unit in units.to_pylist() for row in read_chunks(unit, root, size, overlap)]
    return pa.Table.from_pylist(rows, schema=schema)
