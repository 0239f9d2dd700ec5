"""The prepare stage: a source (synthetic, JSONL/Parquet, HF dataset) -> prompts/ rows.

Rows follow kdist.rows.PROMPT_SCHEMA and stream through Ray Data from the source to sharded
Parquet: the driver never holds the rows. Ids are stable across reruns (the synthetic split and
index, or the source's own id column, or a hash of the question), so later stages resume by id.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pyarrow as pa

from kdist import storage
from kdist.config import DataSection, FileSource, HFSource, SyntheticSource
from kdist.data import synthetic
from kdist.data.tasks import LETTERS, MultipleChoice
from kdist.errors import UsageError
from kdist.rows import PROMPT_SCHEMA
from kdist.stages import StageContext

log = logging.getLogger(__name__)

SIDE_STAGE_CPUS = 0.1
ROWS_PER_BLOCK = 4096
SPLIT_COLUMN = "__split"
INDEX_COLUMN = "__index"


def run(context: StageContext) -> dict[str, Any]:
    config = context.config
    out = context.dir("prepare")
    records = source_records(config.data, config.run.seed)
    prompts = records.map_batches(
        to_prompts, fn_kwargs={"data": config.data, "seed": config.run.seed},
        batch_format="pyarrow", batch_size=ROWS_PER_BLOCK, num_cpus=SIDE_STAGE_CPUS,
    )  # fmt: skip
    storage.write_dataset(prompts, out, schema=PROMPT_SCHEMA)
    per_split = split_counts(out)
    rows = sum(per_split.values())
    log.info("prepare: %d prompts %s", rows, per_split)
    return {"rows": rows, "splits": per_split}


def split_counts(prompts_uri: str) -> dict[str, int]:
    """Rows per split, from the split column alone."""
    counts = storage.value_counts(prompts_uri, "split")
    return {split: counts[split] for split in sorted(counts, key=str)}


# --- sources as Ray Datasets ----------------------------------------------------------------------


def source_records(data: DataSection, seed: int) -> Any:
    source = data.source
    if isinstance(source, SyntheticSource):
        return _synthetic_records(source)
    if isinstance(source, FileSource):
        return _file_records(source)
    if isinstance(source, HFSource):
        return _hf_records(source)
    raise UsageError(f"unknown data source {source!r}")  # pragma: no cover - the union forbids it


def _synthetic_records(source: SyntheticSource) -> Any:
    """(split, index) rows only: the workers make each question from its (seed, split, index)."""
    import ray.data

    sizes = {"teacher_train": source.teacher_train, "train": source.train,
             "validation": source.validation, "test": source.test}  # fmt: skip
    parts = [
        ray.data.range(size, override_num_blocks=max(1, size // ROWS_PER_BLOCK)).map_batches(
            _label_split, fn_kwargs={"split": split}, batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS
        )
        for split, size in sizes.items() if size
    ]  # fmt: skip
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _label_split(batch: pa.Table, split: str) -> pa.Table:
    return pa.table({INDEX_COLUMN: batch["id"], SPLIT_COLUMN: pa.array([split] * batch.num_rows, pa.string())})


def _file_records(source: FileSource) -> Any:
    import ray.data

    fs, path = storage.filesystem_for(source.path)
    try:
        if source.kind == "jsonl":
            # Lines, parsed in the workers: rows of one file may differ in shape (a list of
            # choices here, CommonsenseQA's labelled struct there), which Arrow's JSON reader
            # refuses, and a bad line can be named in the error.
            return ray.data.read_text(path, filesystem=fs, include_paths=True, num_cpus=storage.READ_CPUS)
        return ray.data.read_parquet(path, filesystem=fs, num_cpus=storage.READ_CPUS)
    except (FileNotFoundError, ValueError) as err:
        if isinstance(err, FileNotFoundError) or "No input files" in str(err) or "does not exist" in str(err):
            raise UsageError(f"data.source.path: no {source.kind} file at {source.path}") from None
        raise


def _hf_records(source: HFSource) -> Any:
    import datasets
    import ray.data

    parts = []
    for split, hf_split in source.splits.items():
        records = datasets.load_dataset(source.path, source.name, split=hf_split)
        parts.append(ray.data.from_huggingface(records).map_batches(
            _with_split, fn_kwargs={"split": split}, batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _with_split(batch: pa.Table, split: str) -> pa.Table:
    return batch.append_column(SPLIT_COLUMN, pa.array([split] * batch.num_rows, pa.string()))


# --- records -> prompt rows (in the workers) ------------------------------------------------------


def to_prompts(batch: pa.Table, data: DataSection, seed: int) -> pa.Table:
    rows = [prompt_row(question, split, row_id, data) for row_id, split, question in _questions(batch, data, seed)]
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def prompt_row(question: MultipleChoice, split: str, row_id: str, data: DataSection) -> dict[str, Any]:
    return {
        "id": row_id,
        "task": data.task,
        "messages": question.messages(data.system_prompt),
        "reference": question.answer,
        "split": split,
        "meta": json.dumps({"choices": question.choices}),
    }


def _questions(batch: pa.Table, data: DataSection, seed: int):
    source = data.source
    if isinstance(source, SyntheticSource):
        for index, split in zip(batch[INDEX_COLUMN].to_pylist(), batch[SPLIT_COLUMN].to_pylist()):
            yield f"{split}-{index:06d}", split, synthetic.question_at(seed, split, index)
        return
    for record in _records(batch, source):
        yield _from_record(record, source)


def _records(batch: pa.Table, source: FileSource | HFSource):
    if not (isinstance(source, FileSource) and source.kind == "jsonl"):
        yield from batch.to_pylist()
        return
    for line, path in zip(batch["text"].to_pylist(), batch["path"].to_pylist()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}: a line is not valid JSON ({err.msg}): {line[:60]!r}") from None
        if not isinstance(record, dict):
            raise UsageError(f"{path}: a line is not a JSON object: {line[:60]!r}")
        yield record


def _from_record(record: dict[str, Any], source: FileSource | HFSource) -> tuple[str, str, MultipleChoice]:
    where = f"row with id {record['id']!r}" if record.get("id") is not None else "a row"
    question = _field(record, source.question_field, where)
    choices = _choices(_field(record, source.choices_field, where), where)
    answer = None
    if source.answer_field and record.get(source.answer_field) not in (None, ""):
        answer = _answer_letter(record[source.answer_field], choices, where)
    split_field = getattr(source, "split_field", None)
    split = record.get(SPLIT_COLUMN) or (record.get(split_field) if split_field else None)
    row_id = str(record.get("id") or _content_id(str(question), choices))
    return row_id, split or "train", MultipleChoice(str(question), choices, answer)


def _field(record: dict[str, Any], name: str, where: str) -> Any:
    if name not in record or record[name] is None:
        fields = ", ".join(key for key in record if key != SPLIT_COLUMN)
        raise UsageError(f"{where}: missing field '{name}' (fields: {fields})")
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
