"""Source files as read units: JSONL, CSV and Parquet, local or on object storage.

The driver plans the units (one per JSONL or CSV file, one per Parquet row group) and checks
what it can without reading rows (the files exist, none is empty, every Parquet footer reads);
workers read a unit and yield `(where, record)` pairs, `where` naming the file and line (or
row) for the error messages. A whole JSONL or CSV file is one unit: for very large inputs
prefer many files, or Parquet, which is read by row group.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kdist import storage
from kdist.errors import UsageError

SUFFIXES = {"jsonl": (".jsonl", ".json"), "csv": (".csv",), "parquet": (".parquet",),
            # Not rows: documents to cut into chunks (kdist.data.documents).
            "documents": (".txt", ".text", ".md", ".markdown")}  # fmt: skip
ROW_FORMATS = ("jsonl", "csv", "parquet")


class RowProblem(ValueError):
    """A source row that cannot be read (a malformed line): the text names where it is. Under
    `data.on_bad_row: skip` it is counted and skipped, like a row its task refuses."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


def file_kind(path: str, declared: str | None) -> str:
    if declared:
        return declared
    for kind in ROW_FORMATS:
        if path.endswith(SUFFIXES[kind]):
            return kind
    raise UsageError(f"data.source.format: cannot tell the format of {path} from its name; set jsonl, csv or parquet")


def plan(path: str, kind: str) -> list[dict[str, Any]]:
    """Units to read: {"kind", "path", "part"} (part: a Parquet row group)."""
    units = []
    for file in _files(path, kind):
        if kind == "parquet":
            units += [{"kind": kind, "path": file, "part": group} for group in range(_row_groups(file))]
        else:
            units.append({"kind": kind, "path": file, "part": 0})
    return units


def _files(uri: str, kind: str) -> list[str]:
    fs, root = storage.filesystem_for(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise UsageError(f"data.source.path: no {kind} file at {uri}")
    if info.type == pafs.FileType.File:
        found = [info]
    else:
        found = [f for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                 if f.type == pafs.FileType.File and f.base_name.endswith(SUFFIXES[kind])
                 and not f.base_name.startswith((".", "_"))]  # fmt: skip
        if not found:
            raise UsageError(f"data.source.path: no {kind} file ({', '.join(SUFFIXES[kind])}) under {uri}")
    for f in found:
        if f.size == 0:
            raise UsageError(f"{_shown(uri, root, f.path)}: the file is empty (no rows)")
    return sorted(_shown(uri, root, f.path) for f in found)


def _shown(uri: str, root: str, path: str) -> str:
    """A file found under `uri`, as a location storage takes (and the user recognises)."""
    return uri if path == root else storage.join(uri, path[len(root):].lstrip("/"))


def _row_groups(uri: str) -> int:
    fs, path = storage.filesystem_for(uri)
    try:
        with fs.open_input_file(path) as handle:
            return pq.ParquetFile(handle).metadata.num_row_groups
    except (OSError, pa.ArrowException) as err:
        raise UsageError(f"{uri}: not a readable Parquet file, truncated or corrupt ({_first_line(err)})") from None


def read(unit: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any] | RowProblem]]:
    """(where, record) for each row of the unit; a malformed row comes as a RowProblem."""
    readers = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}
    yield from readers[unit["kind"]](unit["path"], unit["part"])


def _jsonl(uri: str, _part: int) -> Iterator[tuple[str, dict[str, Any] | RowProblem]]:
    fs, path = storage.filesystem_for(uri)
    rows = 0
    with fs.open_input_stream(path) as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"), start=1):
            if not line.strip():
                continue
            rows += 1
            where = f"{uri}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                yield where, RowProblem(where, f"not valid JSON ({err.msg} at column {err.colno}): {line.strip()[:60]!r}")
                continue
            if not isinstance(record, dict):
                yield where, RowProblem(where, f"not a JSON object: {line.strip()[:60]!r}")
                continue
            yield where, record
    if not rows:
        raise UsageError(f"{uri}: the file has no rows (only blank lines)")


def _csv(uri: str, _part: int) -> Iterator[tuple[str, dict[str, Any] | RowProblem]]:
    fs, path = storage.filesystem_for(uri)
    problems: list[RowProblem] = []

    def malformed(row: Any) -> str:
        # A line with the wrong number of fields: kept as a problem, reported in row order.
        where = f"{uri}:{row.number}" if row.number is not None else uri
        problems.append(RowProblem(where, f"expected {row.expected_columns} fields, got {row.actual_columns}: {row.text[:60]!r}"))
        return "skip"

    try:
        with fs.open_input_stream(path) as handle:
            table = pacsv.read_csv(handle, parse_options=pacsv.ParseOptions(invalid_row_handler=malformed),
                                   convert_options=pacsv.ConvertOptions(strings_can_be_null=False))  # fmt: skip
    except pa.ArrowInvalid as err:
        raise UsageError(f"{uri}: not a readable CSV file ({_first_line(err)})") from None
    for problem in problems:
        yield problem.where, problem
    # Line numbers as an editor shows them: the header is line 1 (quoted multi-line fields
    # make later numbers approximate).
    for index, record in enumerate(table.to_pylist()):
        yield f"{uri}:{index + 2}", record


def _parquet(uri: str, group: int) -> Iterator[tuple[str, dict[str, Any] | RowProblem]]:
    fs, path = storage.filesystem_for(uri)
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            first = sum(parquet.metadata.row_group(g).num_rows for g in range(group))
            table = parquet.read_row_group(group)
    except (OSError, pa.ArrowException) as err:
        raise UsageError(f"{uri}: row group {group} is not readable, truncated or corrupt ({_first_line(err)})") from None
    for index, record in enumerate(table.to_pylist()):
        yield f"{uri} row {first + index + 1}", record


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
