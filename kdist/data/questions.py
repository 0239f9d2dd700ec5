"""Questions generated from documents (data.source.kind `document_questions`).

Each chunk of the documents (kdist.data.documents) is one request to the writer, rendered
from templates/questions.jinja (or the config's `template`; variables `chunk`, `n`,
`source`); each question read back from its answer, with its chunk, is a `qa` row: the
question, and the chunk as its context (which the qa task keeps in meta.context, where the
judge's RAG rubrics read it).

Writers answer in many shapes: a JSON list, `{"questions": [...]}`, a numbered or bulleted
list, `Q1: ...` lines, with a chatty first line. `parse_questions` reads all of these and
returns at most `n` distinct questions; an answer with none in it is counted as unparsable
by the caller, never guessed from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from kdist.data import documents
from kdist.data.candidates import GROUP_KEY
from kdist.data.written import first_json

LABEL = "questions"
DEFAULT_TEMPLATE = Path(__file__).with_name("templates") / "questions.jinja"
VARIABLES = ("chunk", "n", "source")
ITEM_SCHEMA = pa.schema([("id", pa.string()), ("where", pa.string()), ("bad", pa.string()), ("text", pa.string())])

# A list marker at a line start: "1.", "2)", "-", "*", "•", "Q1:", "Question 2:", "Question:".
_MARKER = re.compile(r"^\s*(?:(?:\d+|[a-z])[.)]|[-*•]|(?:q|question)\s*\d*\s*[:.)])\s*", re.IGNORECASE)


def plan(source: Any) -> list[dict[str, Any]]:
    return documents.plan(source.path)


def items(unit: dict[str, Any], source: Any, data: Any) -> list[dict[str, Any]]:
    return documents.read_chunks(unit, source.path, source.chunk_size, source.chunk_overlap)


def variables(item: dict[str, Any], source: Any) -> dict[str, Any]:
    return {"chunk": item["text"], "n": source.questions_per_chunk, "source": item["id"].rsplit("#", 1)[0]}


def asked(source: Any) -> int:
    return source.questions_per_chunk


def parse(text: str, source: Any) -> list[str]:
    return parse_questions(text, source.questions_per_chunk)


def parse_questions(text: str | None, n: int) -> list[str]:
    """At most `n` distinct questions from a writer's answer (JSON first, else list lines)."""
    if not text or not text.strip():
        return []
    found = _from_json(text)
    if found is None:
        found = _from_lines(text)
    unique: dict[str, str] = {}
    for question in found:
        question = " ".join(question.split())
        if question and question.casefold() not in unique:
            unique[question.casefold()] = question
    return list(unique.values())[:n]


def _from_json(text: str) -> list[str] | None:
    """Questions of the first JSON list (or {"questions": [...]}) in the text, or None."""
    for value in first_json(text):
        if isinstance(value, dict):
            value = value.get("questions")
        if isinstance(value, list):
            return [item if isinstance(item, str) else str(item.get("question", "")) for item in value if isinstance(item, (str, dict))]
    return None


def _from_lines(text: str) -> list[str]:
    """List items and lines that ask something; a lead-in ("Here are 3 questions:") is
    neither and is skipped."""
    questions = []
    for line in text.splitlines():
        stripped = line.replace("**", "").strip().strip("`").strip()  # markdown bold around a number
        marked = _MARKER.match(stripped)
        body = stripped[marked.end() :].strip().strip('"').strip() if marked else stripped
        if body and (body.endswith("?") or (marked and not body.endswith(":"))):
            questions.append(body)
    return questions


def records(item: dict[str, Any], parsed: list[str], source: Any, task: Any) -> list[dict[str, Any]]:
    """(question, chunk) pairs as rows in the qa task's column names; the chunk's document is
    their group (a split never cuts it: neighbour chunks overlap, so a question of one chunk
    can be answered from its neighbour's text, and grouping by chunk leaked that text across
    splits)."""
    group = documents.document_of(item["id"])
    return [{"id": f"{item['id']}-q{index + 1}", task.column("question"): question, task.column("context"): item["text"],
             GROUP_KEY: group} for index, question in enumerate(parsed)]  # fmt: skip


def row_schema(task: Any) -> pa.Schema:
    return pa.schema([("id", pa.string()), (task.column("question"), pa.string()), (task.column("context"), pa.string()),
                      (GROUP_KEY, pa.string())])  # fmt: skip
