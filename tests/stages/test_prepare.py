"""The prepare stage: sources -> prompts/ rows (PROMPT_SCHEMA), streamed through Ray Data."""

import json

import pytest

from kdist import storage
from kdist.config import validate_config
from kdist.errors import UsageError
from kdist.stages import StageContext
from kdist.stages import BY_NAME

pytestmark = pytest.mark.usefixtures("local_ray")


def prepare(source: dict, tmp_path) -> tuple[dict, list[dict]]:
    config = validate_config({"teacher": {"model": "t"}, "student": {"model": "s"},
                              "data": {"source": source}, "run": {"output_dir": str(tmp_path)}})
    summary = BY_NAME["prepare"].run(StageContext(config, str(tmp_path)))
    rows = storage.read_table(str(tmp_path / "prompts")).to_pylist()
    return summary, sorted(rows, key=lambda row: row["id"])


def test_synthetic_prepare_writes_every_split_with_stable_rows(tmp_path):
    source = {"kind": "synthetic_mc", "teacher_train": 5, "train": 7, "validation": 3, "test": 4}
    summary, rows = prepare(source, tmp_path / "a")
    assert summary["splits"] == {"teacher_train": 5, "train": 7, "validation": 3, "test": 4}
    assert len(rows) == 19 and len({row["id"] for row in rows}) == 19
    assert rows[0]["messages"][0]["role"] == "user" and rows[0]["reference"] in "ABCDE"
    # Each row is a function of (seed, split, index): a second run writes the same rows.
    assert prepare(source, tmp_path / "b")[1] == rows


def test_jsonl_commonsenseqa_format(tmp_path):
    records = [
        {"id": "q1", "question": "Where is ice?", "split": "test", "answerKey": "B",
         "choices": {"label": ["A", "B", "C"], "text": ["oven", "freezer", "sun"]}},
        {"question": "Pick two", "choices": ["one", "two"], "answerKey": 1},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    _, rows = prepare({"kind": "jsonl", "path": str(path), "answer_field": "answerKey"}, tmp_path / "out")
    by_split = {row["split"]: row for row in rows}
    assert by_split["test"]["id"] == "q1" and by_split["test"]["reference"] == "B"
    assert "A) oven B) freezer C) sun" in by_split["test"]["messages"][0]["content"]
    assert by_split["train"]["reference"] == "B" and len(by_split["train"]["id"]) == 16


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"question": "Q?", "choices": ["a", "b"], "answer": "a", "split": "validation"}]),
                   tmp_path / "rows.parquet")  # fmt: skip
    _, rows = prepare({"kind": "parquet", "path": str(tmp_path / "rows.parquet")}, tmp_path / "out")
    assert [(row["split"], row["reference"]) for row in rows] == [("validation", "A")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (json.dumps({"id": "q7", "question": "q", "choices": ["a", "b"], "answer": "Q"}), r"row with id 'q7': answer 'Q' is not a letter A-B"),
        (json.dumps({"question": "q", "answer": "A"}), r"a row: missing field 'choices' \(fields: question, answer\)"),
        ('{"question": "q", "choices": ["a", ', r"rows.jsonl: a line is not valid JSON"),
    ],
)
def test_bad_rows_are_one_line_usage_errors_naming_the_row(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UsageError, match=message) as raised:
        prepare({"kind": "jsonl", "path": str(path)}, tmp_path / "out")
    assert "\n" not in str(raised.value)
    assert not storage.exists(str(tmp_path / "out" / "prompts"))  # nothing half-written


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no jsonl file at"):
        prepare({"kind": "jsonl", "path": str(tmp_path / "nope.jsonl")}, tmp_path / "out")
