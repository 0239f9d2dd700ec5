"""The prepare stage: a source (synthetic, JSONL/Parquet, HF dataset) -> prompts/ rows.

Rows follow kdist.rows.PROMPT_SCHEMA. Ids are stable across reruns (the synthetic split and
index, or the source's own id column, or a hash of the question), so later stages resume by id.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from kdist import io
from kdist.config import DataSection, FileSource, HFSource, RunConfig, SyntheticSource
from kdist.data import synthetic
from kdist.data.tasks import LETTERS, MultipleChoice
from kdist.errors import UsageError
from kdist.rows import PROMPT_SCHEMA

log = logging.getLogger(__name__)

PROMPTS_FILE = "prompts.parquet"


def run_prepare(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    rows = list(prompt_rows(config.data, config.run.seed))
    table = pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)
    io.write_table(out_dir / PROMPTS_FILE, table)
    per_split: dict[str, int] = {}
    for row in rows:
        per_split[row["split"]] = per_split.get(row["split"], 0) + 1
    log.info("prepare: %d prompts %s", len(rows), per_split)
    return {"rows": len(rows), "splits": per_split}


def prompt_rows(data: DataSection, seed: int) -> Iterator[dict[str, Any]]:
    for row_id, split, question in _questions(data.source, seed):
        yield {
            "id": row_id,
            "task": data.task,
            "messages": question.messages(data.system_prompt),
            "reference": question.answer,
            "split": split,
            "meta": json.dumps({"choices": question.choices}),
        }


def _questions(source, seed: int) -> Iterator[tuple[str, str, MultipleChoice]]:
    if isinstance(source, SyntheticSource):
        sizes = {
            "teacher_train": source.teacher_train,
            "train": source.train,
            "validation": source.validation,
            "test": source.test,
        }
        for split, index, question in synthetic.generate(sizes, seed):
            yield f"{split}-{index:06d}", split, question
    elif isinstance(source, FileSource):
        yield from _from_records(_load_file_records(source), source)
    elif isinstance(source, HFSource):
        yield from _from_hf(source)
    else:  # pragma: no cover - the config's discriminated union makes this unreachable
        raise UsageError(f"unknown data source {source!r}")


def _load_file_records(source: FileSource) -> Iterable[dict[str, Any]]:
    import datasets

    builder = "json" if source.kind == "jsonl" else "parquet"
    try:
        return datasets.load_dataset(builder, data_files=source.path, split="train")
    except FileNotFoundError:
        raise UsageError(f"data.source.path: no {source.kind} file at {source.path}") from None


def _from_hf(source: HFSource) -> Iterator[tuple[str, str, MultipleChoice]]:
    import datasets

    for split, hf_split in source.splits.items():
        records = datasets.load_dataset(source.path, source.name, split=hf_split)
        for record in records:
            yield from _from_records([{**record, "__split": split}], source)


def _from_records(records: Iterable[dict[str, Any]], source) -> Iterator[tuple[str, str, Any]]:
    split_field = getattr(source, "split_field", None)
    for index, record in enumerate(records):
        where = f"row {index}"
        question = _field(record, source.question_field, where)
        choices = _choices(_field(record, source.choices_field, where), where)
        answer = None
        if source.answer_field and record.get(source.answer_field) not in (None, ""):
            answer = _answer_letter(record[source.answer_field], choices, where)
        split = record.get("__split") or (record.get(split_field) if split_field else None)
        row_id = str(record.get("id") or _content_id(question, choices))
        yield row_id, split or "train", MultipleChoice(str(question), choices, answer)


def _field(record: dict[str, Any], name: str, where: str) -> Any:
    if name not in record or record[name] is None:
        raise UsageError(f"{where}: missing field '{name}' (fields: {', '.join(record)})")
    return record[name]


def _choices(value: Any, where: str) -> list[str]:
    # Either a plain list of strings or CommonsenseQA's {"label": [...], "text": [...]}.
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if not isinstance(value, list) or not 2 <= len(value) <= len(LETTERS):
        raise UsageError(f"{where}: choices must be a list of 2 to {len(LETTERS)} strings")
    return [str(choice) for choice in value]


def _answer_letter(value: Any, choices: list[str], where: str) -> str:
    letters = LETTERS[: len(choices)]
    if isinstance(value, int) and 0 <= value < len(choices):
        return letters[value]
    text = str(value).strip()
    if text.upper() in letters and len(text) == 1:
        return text.upper()
    if text in choices:
        return letters[choices.index(text)]
    raise UsageError(
        f"{where}: answer {value!r} is not a letter {letters[0]}-{letters[-1]}, "
        "an index or one of the choices"
    )


def _content_id(question: str, choices: list[str]) -> str:
    return hashlib.sha256(json.dumps([question, choices]).encode()).hexdigest()[:16]
