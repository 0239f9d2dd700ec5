"""Source records -> candidate prompt rows, in the workers: the task builds the messages, and
each row gets what the driver's selection needs (kdist.data.selection) without the rows
themselves: a row key, hashes of its id and prompt, its source split and label, and the hash of
its group (GROUP_KEY: rows a writer made from one chunk or one conversation), which no split
may cut.

A row that cannot be used (a malformed line, a missing column, an empty text, a label outside
the task's set) stops prepare with one line naming it (`data.on_bad_row: error`) or becomes a
`bad` candidate that is counted and left out (`skip`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from kdist.data import files, hf
from kdist.data.files import RowProblem
from kdist.errors import UsageError
from kdist.rows import MESSAGE
from kdist.tasks import RowError, Task, task_for
from kdist.tasks.metrics import normalise

ROWS_PER_TABLE = 4096
# Unit number in the high bits, row number within the unit in the low ones: unique, ordered
# as the source is, and an integer (8 bytes a row in the driver's selection).
ROW_BITS = 40

CANDIDATE_SCHEMA = pa.schema([
    ("rowkey", pa.int64()), ("where", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("id", pa.string()), ("id_hash", pa.int64()), ("prompt_hash", pa.int64()), ("text_hash", pa.int64()),
    ("source_split", pa.string()), ("label", pa.string()), ("group_hash", pa.int64()),
    ("messages", pa.list_(MESSAGE)), ("reference", pa.string()), ("meta", pa.string()),
    ("completion", pa.string()),
])  # fmt: skip
OK, BAD, LOW_SCORE = "ok", "bad", "low_score"
# The column of a generated source's rows (kdist.data.written) that names their origin: rows
# of one group (the questions of one chunk, a conversation and its augmented copies) are
# near-copies of each other, and a split that cut a group would test on what train has seen.
GROUP_KEY = "__group"


def unit_candidates(units: pa.Table, data: Any, loaded: dict[str, Any] | None = None) -> Iterator[pa.Table]:
    """A Ray Data UDF over rows of read units (kdist.data.files / kdist.data.hf)."""
    task = task_for(data.task)
    for unit in units.to_pylist():
        rows = []
        records = hf.read(unit, loaded or {}, data.source.path) if unit["kind"] == "hf" else files.read(unit)
        for offset, (where, record) in enumerate(records):
            rows.append(candidate((unit["index"] << ROW_BITS) | offset, where, record, task, data))
            if len(rows) == ROWS_PER_TABLE:
                yield pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)


def candidate(rowkey: int, where: str, record: dict[str, Any] | RowProblem, task: Task, data: Any) -> dict[str, Any]:
    try:
        if isinstance(record, RowProblem):
            raise record
        return _usable(rowkey, where, record, task, data)
    except (RowError, RowProblem) as err:
        return {"rowkey": rowkey, "where": where, "status": BAD, "error": bad_row(err, where, data.on_bad_row)}


def bad_row(err: RowError | RowProblem, where: str, on_bad_row: str) -> str:
    """The one line for a row that cannot be used: raised (`data.on_bad_row: error`), or
    returned to be counted and left out (`skip`)."""
    message = str(err) if isinstance(err, RowProblem) else f"{where}: {err}"
    if on_bad_row == "error":
        raise UsageError(f"{message} (data.on_bad_row: skip leaves such rows out, counted)") from None
    return message


def _usable(rowkey: int, where: str, record: dict[str, Any], task: Task, data: Any) -> dict[str, Any]:
    source = data.source
    prompt = task.prompt(record, data.system_prompt)
    status, completion = OK, None
    if source.kind == "synthetic_export":
        completion, status = _completion(record, source)
    prompt_text = json.dumps(prompt.messages, sort_keys=True, ensure_ascii=False)
    given_id = record.get(source.id_field) if source.id_field else None
    row_id = str(given_id) if given_id not in (None, "") else _digest(prompt_text)[:16]
    split = record.get(hf.SPLIT_KEY) or (record.get(source.split_field) if getattr(source, "split_field", None) else None)
    return {
        "rowkey": rowkey, "where": where, "status": status, "error": None,
        "id": row_id, "id_hash": _hash64(row_id), "prompt_hash": _hash64(prompt_text),
        "text_hash": _hash64(" ".join(normalise(m["content"]) for m in prompt.messages if m["role"] != "system")),
        "source_split": None if split in (None, "") else str(split), "label": prompt.label,
        "group_hash": None if record.get(GROUP_KEY) in (None, "") else _hash64(str(record[GROUP_KEY])),
        "messages": prompt.messages, "reference": prompt.reference, "meta": json.dumps(prompt.meta),
        "completion": completion,
    }  # fmt: skip


def _completion(record: dict[str, Any], source: Any) -> tuple[str, str]:
    """An export row's completion, and whether its quality score passes (strictly above)."""
    for name in (source.completion_field, source.score_field):
        if record.get(name) in (None, ""):
            raise RowError(f"missing column '{name}' (the export's {'completion' if name == source.completion_field else 'score'})")
    completion, score = record[source.completion_field], record[source.score_field]
    if not isinstance(completion, str) or not completion.strip():
        raise RowError(f"column '{source.completion_field}' is empty")
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise RowError(f"column '{source.score_field}': score {score!r} is not a number") from None
    return completion, OK if value > source.min_score else LOW_SCORE


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)
