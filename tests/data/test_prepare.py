import json

import pyarrow.parquet as pq
import pytest

from kdist.config import validate_config
from kdist.data.prepare import PROMPTS_FILE, run_prepare
from kdist.errors import UsageError


def config_for(source: dict, tmp_path):
    return validate_config({"teacher": {"model": "t"}, "student": {"model": "s"},
                            "data": {"source": source}, "run": {"output_dir": str(tmp_path)}})


def test_synthetic_prepare_writes_every_split(tmp_path):
    config = config_for({"kind": "synthetic_mc", "teacher_train": 5, "train": 7,
                         "validation": 3, "test": 4}, tmp_path)
    summary = run_prepare(config, tmp_path / "prompts")
    table = pq.read_table(tmp_path / "prompts" / PROMPTS_FILE)
    assert summary["splits"] == {"teacher_train": 5, "train": 7, "validation": 3, "test": 4}
    assert table.num_rows == 19 and len(set(table["id"].to_pylist())) == 19
    row = table.to_pylist()[0]
    assert row["messages"][0]["role"] == "user" and row["reference"] in "ABCDE"


def test_jsonl_commonsenseqa_format(tmp_path):
    rows = [
        {"id": "q1", "question": "Where is ice?", "split": "test", "answerKey": "B",
         "choices": {"label": ["A", "B", "C"], "text": ["oven", "freezer", "sun"]}},
        {"question": "Pick two", "choices": ["one", "two"], "answerKey": 1},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = config_for({"kind": "jsonl", "path": str(path), "answer_field": "answerKey"}, tmp_path)
    run_prepare(config, tmp_path / "prompts")
    table = pq.read_table(tmp_path / "prompts" / PROMPTS_FILE).to_pylist()
    assert [r["reference"] for r in table] == ["B", "B"]
    assert [r["split"] for r in table] == ["test", "train"]
    assert table[0]["id"] == "q1" and len(table[1]["id"]) == 16
    assert "A) oven B) freezer C) sun" in table[0]["messages"][0]["content"]


def test_bad_row_names_row_and_field(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "Q"}))
    config = config_for({"kind": "jsonl", "path": str(path)}, tmp_path)
    with pytest.raises(UsageError, match=r"row 0: answer 'Q' is not a letter A-B"):
        run_prepare(config, tmp_path / "prompts")
