"""Dialogue augmentation (data.source.kind `dialogue_augmentation`).

Each conversation of the source (the `conversation` task's messages column of a JSONL, CSV
or Parquet file) is one request to the writer, rendered from templates/dialogues.jinja (or
the config's `template`; variables `conversation`, a list of {role, content}, and `n`). The
writer answers with follow-up question / answer pairs; the chat extended by the first k of
them, for each k, is a new conversation whose last answer is its reference, so every answer
the writer wrote is learnt once, in the context it was written for. The original is kept
beside them (`keep_original`), and an augmented chat keeps its original's split.

Pairs are read from a JSON list of {"question", "answer"} (or {"user", "assistant"}), or
from `Q:` / `A:` (`Question:`, `User:` / `Answer:`, `Assistant:`) lines.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from kdist.data import files
from kdist.data.candidates import GROUP_KEY, bad_row
from kdist.data.files import RowProblem
from kdist.data.written import first_json
from kdist.rows import MESSAGE
from kdist.tasks import RowError, task_for

LABEL = "dialogues"
DEFAULT_TEMPLATE = Path(__file__).with_name("templates") / "dialogues.jinja"
VARIABLES = ("conversation", "n")
ITEM_SCHEMA = pa.schema([("id", pa.string()), ("where", pa.string()), ("bad", pa.string()),
                         ("split", pa.string()), ("messages", pa.list_(MESSAGE))])  # fmt: skip

_CUES = re.compile(r"^\s*\**\s*(q|question|user|a|answer|assistant)\s*\d*\s*\**\s*[:.)]\s*\**\s*", re.IGNORECASE)
_KEYS = (("question", "answer"), ("user", "assistant"))


def plan(source: Any) -> list[dict[str, Any]]:
    return files.plan(source.path, files.file_kind(source.path, source.format))


def items(unit: dict[str, Any], source: Any, data: Any) -> list[dict[str, Any]]:
    """The conversations of one file, checked by the conversation task; a bad one stops the
    stage naming its line, or (on_bad_row: skip) becomes an item marked `bad`, counted."""
    task = task_for(data.task)
    rows = []
    for where, record in files.read(unit):
        try:
            if isinstance(record, RowProblem):
                raise record
            rows.append(_item(where, record, task, source))
        except (RowError, RowProblem) as err:
            rows.append({"id": where, "where": where, "bad": bad_row(err, where, data.on_bad_row)})
    return rows


def _item(where: str, record: dict[str, Any], task: Any, source: Any) -> dict[str, Any]:
    prompt = task.prompt(record)  # checks the turns: roles, empty content, ends with a user turn
    turns = prompt.messages + ([{"role": "assistant", "content": prompt.reference}] if prompt.reference else [])
    if turns[-1]["role"] != "assistant":
        raise RowError(f"column '{task.column('messages')}': a chat to continue must end with the assistant's reply")
    given = record.get(source.id_field) if source.id_field else None
    row_id = str(given) if given not in (None, "") else hashlib.sha256(json.dumps(turns).encode()).hexdigest()[:16]
    split = record.get(source.split_field) if source.split_field else None
    return {"id": row_id, "where": where, "bad": None, "split": None if split in (None, "") else str(split), "messages": turns}


def variables(item: dict[str, Any], source: Any) -> dict[str, Any]:
    return {"conversation": item["messages"], "n": source.followups}


def asked(source: Any) -> int:
    return source.followups


def parse(text: str, source: Any) -> list[tuple[str, str]]:
    return parse_followups(text, source.followups)


def parse_followups(text: str | None, n: int) -> list[tuple[str, str]]:
    """At most `n` (question, answer) pairs, both non-empty, from a writer's answer."""
    if not text or not text.strip():
        return []
    pairs = _from_json(text)
    if pairs is None:
        pairs = _from_cues(text)
    return [(q.strip(), a.strip()) for q, a in pairs if q.strip() and a.strip()][:n]


def _from_json(text: str) -> list[tuple[str, str]] | None:
    for value in first_json(text):
        if isinstance(value, dict):
            value = next((v for v in value.values() if isinstance(v, list)), [value])
        if isinstance(value, list):
            return [_json_pair(item) for item in value if isinstance(item, dict)]
    return None


def _json_pair(item: dict[str, Any]) -> tuple[str, str]:
    for question, answer in _KEYS:
        if question in item or answer in item:
            return str(item.get(question) or ""), str(item.get(answer) or "")
    return "", ""


def _from_cues(text: str) -> list[tuple[str, str]]:
    """`Q:` starts a question, `A:` its answer; lines without a cue continue the last one."""
    pairs: list[list[str]] = []
    slot = None  # 0: the question being written, 1: its answer
    for line in text.splitlines():
        cue = _CUES.match(line)
        if cue:
            slot = 0 if cue.group(1).lower() in ("q", "question", "user") else 1
            if slot == 0:
                pairs.append(["", ""])
            elif not pairs:
                slot = None  # an answer before any question
                continue
            pairs[-1][slot] = line[cue.end() :].strip()
        elif slot is not None and line.strip():
            pairs[-1][slot] = f"{pairs[-1][slot]}\n{line.strip()}"
    return [(question, answer) for question, answer in pairs]


def records(item: dict[str, Any], parsed: list[tuple[str, str]], source: Any, task: Any) -> list[dict[str, Any]]:
    """The original (when kept) and the chat extended by the first k follow-ups, for each k;
    the source conversation is their group (a split never cuts it: each copy holds its
    original's turns)."""
    column, turns = task.column("messages"), list(item["messages"])
    base = {"split": item["split"], GROUP_KEY: item["id"]}
    rows = [{"id": item["id"], **base, column: turns}] if source.keep_original else []
    for index, (question, answer) in enumerate(parsed):
        turns = [*turns, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"id": f"{item['id']}-aug{index + 1}", **base, column: turns})
    return rows


def row_schema(task: Any) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("split", pa.string()), (GROUP_KEY, pa.string()),
                      (task.column("messages"), pa.list_(MESSAGE))])  # fmt: skip
