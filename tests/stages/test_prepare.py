"""The prepare stage: sources -> prompts/ rows (PROMPT_SCHEMA) for the run's task, with
duplicates, sampling, splits and bad rows accounted for."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdist import storage
from kdist.config import validate_config
from kdist.errors import UsageError
from kdist.llm.store import ResponseStore
from kdist.stages import BY_NAME, StageContext

pytestmark = pytest.mark.usefixtures("local_ray")


def prepare(source: dict, tmp_path, **data) -> tuple[dict, list[dict]]:
    raw = {"teacher": {"model": "t", **data.pop("teacher", {"splits": ["train"]})}, "student": {"model": "s"},
           "data": {"source": source, **data}, "run": {"output_dir": str(tmp_path)}}  # fmt: skip
    config = validate_config(raw)
    summary = BY_NAME["prepare"].run(StageContext(config, str(tmp_path)))
    rows = storage.read_table(str(tmp_path / "prompts")).to_pylist()
    return summary, sorted(rows, key=lambda row: row["id"])


def write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def nli_rows(n: int, start: int = 0) -> list[dict]:
    labels = ["entailment", "neutral", "contradiction"]
    return [{"premise": f"premise {i}", "hypothesis": f"hypothesis {i}", "label": labels[i % 3]} for i in range(start, start + n)]


def test_synthetic_prepare_writes_every_split_with_stable_rows(tmp_path):
    source = {"kind": "synthetic_mc", "teacher_train": 5, "train": 7, "validation": 3, "test": 4}
    summary, rows = prepare(source, tmp_path / "a", teacher={})
    assert summary["splits"] == {"teacher_train": 5, "train": 7, "validation": 3, "test": 4}
    assert summary["unused_splits"] == {"teacher_train": 5}  # no demo section here
    assert len(rows) == 19 and len({row["id"] for row in rows}) == 19
    assert rows[0]["messages"][0]["role"] == "user" and rows[0]["reference"] in "ABCDE"
    # Each row is a function of (seed, split, index): a second run writes the same rows.
    assert prepare(source, tmp_path / "b", teacher={})[1] == rows


def test_jsonl_commonsenseqa_format_with_a_column_mapping(tmp_path):
    records = [
        {"id": "q1", "question": "Where is ice?", "split": "test", "answerKey": "B",
         "choices": {"label": ["A", "B", "C"], "text": ["oven", "freezer", "sun"]}},
        {"question": "Pick two", "choices": ["one", "two"], "answerKey": 1},
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", records)
    task = {"kind": "multiple_choice", "columns": {"answer": "answerKey"}}
    _, rows = prepare({"kind": "jsonl", "path": path}, tmp_path / "out", task=task)
    by_split = {row["split"]: row for row in rows}
    assert by_split["test"]["id"] == "q1" and by_split["test"]["reference"] == "B"
    assert "A) oven B) freezer C) sun" in by_split["test"]["messages"][0]["content"]
    assert by_split["train"]["reference"] == "B" and len(by_split["train"]["id"]) == 16


def test_csv_and_parquet_sources_for_nli(tmp_path):
    csv = tmp_path / "nli.csv"
    csv.write_text("sentence1,sentence2,gold\nA man sleeps.,A man runs.,2\nA dog barks.,An animal makes noise.,0\n")
    task = {"kind": "nli", "columns": {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold"}}
    _, rows = prepare({"kind": "csv", "path": str(csv)}, tmp_path / "csv", task=task)
    assert sorted(row["reference"] for row in rows) == ["contradiction", "entailment"]
    assert rows[0]["task"] == "nli" and "Premise:" in rows[0]["messages"][0]["content"]
    pq.write_table(pa.Table.from_pylist(nli_rows(4)), tmp_path / "nli.parquet", row_group_size=2)
    summary, rows = prepare({"kind": "parquet", "path": str(tmp_path / "nli.parquet")}, tmp_path / "pq", task="nli")
    assert summary["rows"] == 4 and {row["split"] for row in rows} == {"train"}


def test_hf_save_to_disk_and_data_files(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(nli_rows(6)),
                          "test": datasets.Dataset.from_list(nli_rows(3, start=10))}).save_to_disk(str(tmp_path / "saved"))  # fmt: skip
    summary, rows = prepare({"kind": "hf", "path": str(tmp_path / "saved")}, tmp_path / "a", task="nli")
    assert summary["splits"] == {"test": 3, "train": 6}
    write_jsonl(tmp_path / "data.jsonl", nli_rows(5))
    source = {"kind": "hf", "path": "json", "data_files": str(tmp_path / "data.jsonl"), "splits": {"train": "train"}}
    summary, _ = prepare(source, tmp_path / "b", task="nli")
    assert summary["splits"] == {"train": 5}


def test_synthetic_export_keeps_scores_strictly_above_min_and_stores_completions_as_source_answers(tmp_path):
    records = [{"prompt": f"Ticket {i}: my order is late", "completion": f"Sorry about order {i}.", "score": score}
               for i, score in enumerate([5.0, 4.9, 4.95, 3.0])]  # fmt: skip
    path = write_jsonl(tmp_path / "export.jsonl", records)
    source = {"kind": "synthetic_export", "path": path, "min_score": 4.9}
    summary, rows = prepare(source, tmp_path / "out", task={"kind": "qa", "columns": {"question": "prompt"}},
                            teacher={"splits": []})  # fmt: skip
    assert summary["rows"] == 2 and summary["below_min_score"] == 2 and summary["source_answers"] == 2
    answers = ResponseStore(str(tmp_path / "out" / "responses")).read_all()
    assert set(answers["candidate"].to_pylist()) == {"source"}
    assert sorted(answers["response"].to_pylist()) == ["Sorry about order 0.", "Sorry about order 2."]
    assert set(answers["id"].to_pylist()) == {row["id"] for row in rows}
    # A rerun replaces the source answers instead of adding to them.
    prepare(source, tmp_path / "out", task={"kind": "qa", "columns": {"question": "prompt"}}, teacher={"splits": []})
    assert ResponseStore(str(tmp_path / "out" / "responses")).read_all().num_rows == 2


def test_duplicates_sampling_and_stratified_splits(tmp_path):
    records = nli_rows(60) + nli_rows(5)  # five exact duplicates
    path = write_jsonl(tmp_path / "rows.jsonl", records)
    summary, rows = prepare({"kind": "jsonl", "path": path}, tmp_path / "a", task="nli",
                            splits={"train": 0.7, "test": 0.3})  # fmt: skip
    assert summary["duplicates_removed"] == 5 and summary["splits"] == {"test": 18, "train": 42}
    test_labels = [row["reference"] for row in rows if row["split"] == "test"]
    assert all(test_labels.count(label) == 6 for label in ("entailment", "neutral", "contradiction"))
    # Counts, seeded: the same rows each time; a different seed picks others.
    again = prepare({"kind": "jsonl", "path": path}, tmp_path / "b", task="nli", splits={"train": 0.7, "test": 0.3})[1]
    assert again == rows
    summary, rows = prepare({"kind": "jsonl", "path": path}, tmp_path / "c", task="nli",
                            splits={"train": 9, "validation": 3}, teacher={"splits": ["train", "validation"]})  # fmt: skip
    assert summary["splits"] == {"train": 9, "validation": 3} and summary["unassigned"] == 48
    summary, rows = prepare({"kind": "jsonl", "path": path}, tmp_path / "d", task="nli", sample={"n": 10})
    assert summary["rows"] == 10 and {row["messages"][0]["content"].split("\n")[0] for row in rows} == {f"Premise: premise {i}" for i in range(10)}
    summary, _ = prepare({"kind": "jsonl", "path": path}, tmp_path / "e", task="nli", sample={"n": 10, "how": "random"})
    assert summary["rows"] == 10


def test_a_duplicate_prompt_across_splits_stays_in_the_held_out_split_and_overlap_is_counted(tmp_path):
    records = [{**nli_rows(1)[0], "split": "train"}, {**nli_rows(1)[0], "split": "test"},
               {"premise": "Premise 5!", "hypothesis": "hypothesis 5", "split": "test"},
               {"premise": "premise 5", "hypothesis": "Hypothesis 5.", "split": "train"}]  # fmt: skip
    path = write_jsonl(tmp_path / "rows.jsonl", records)
    summary, rows = prepare({"kind": "jsonl", "path": path}, tmp_path / "a", task="nli")
    assert summary["splits"] == {"test": 2, "train": 1} and summary["duplicates_removed"] == 1
    assert summary["overlap_with_train"] == {"test": 1}  # same text once normalised


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps({"id": "q7", "question": "q", "choices": ["a", "b"], "answer": "Q"})], r"rows.jsonl:1: column 'answer': answer 'Q' is not a letter A-B"),
        ([json.dumps({"question": "q", "answer": "A"})], r"rows.jsonl:1: missing column 'choices' \(task field 'choices'; the row has: question, answer\)"),
        (["", json.dumps({"question": "q", "choices": ["a", "b"]}), '{"question": "q", "choices": ["a", '], r"rows.jsonl:3: not valid JSON"),
        ([json.dumps({"question": "  ", "choices": ["a", "b"]})], r"rows.jsonl:1: column 'question' is empty"),
    ],
)
def test_bad_rows_are_one_line_usage_errors_naming_file_line_and_field(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "rows.jsonl", lines)
    with pytest.raises(UsageError, match=message) as raised:
        prepare({"kind": "jsonl", "path": path}, tmp_path / "out")
    assert "\n" not in str(raised.value)
    assert not storage.exists(str(tmp_path / "out" / "prompts"))  # nothing half-written


def test_on_bad_row_skip_counts_the_rows_it_leaves_out(tmp_path):
    records = [*nli_rows(3), {"premise": "p", "hypothesis": "h", "label": "maybe"}, "{not json", {"premise": "p"}]
    path = write_jsonl(tmp_path / "rows.jsonl", records)
    summary, rows = prepare({"kind": "jsonl", "path": path}, tmp_path / "out", task="nli", on_bad_row="skip")
    assert summary["rows"] == 3 and summary["bad_rows_skipped"] == 3 and summary["source_rows"] == 6


def test_nli_label_outside_the_set_names_the_allowed_labels(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [*nli_rows(2), {"premise": "p", "hypothesis": "h", "label": "maybe"}])
    with pytest.raises(UsageError, match=r"rows.jsonl:3: column 'label': label 'maybe' is not one of entailment, neutral, contradiction"):
        prepare({"kind": "jsonl", "path": path}, tmp_path / "out", task="nli")


def test_two_rows_with_one_id_and_different_prompts_name_both(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{**nli_rows(1)[0], "id": "x"}, nli_rows(2)[1], {**nli_rows(3)[2], "id": "x"}])
    with pytest.raises(UsageError, match=r"id 'x' names two different rows: .*rows.jsonl:1 and .*rows.jsonl:3"):
        prepare({"kind": "jsonl", "path": path}, tmp_path / "out", task="nli")


def test_a_teacher_split_without_rows_is_a_usage_error(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", nli_rows(3))
    with pytest.raises(UsageError, match=r"teacher.splits names 'tset', which has no rows in the data \(splits found: train 3\)"):
        prepare({"kind": "jsonl", "path": path}, tmp_path / "out", task="nli", teacher={"splits": ["train", "tset"]})
    # The default list (train, validation, test) needs only one split with rows.
    assert prepare({"kind": "jsonl", "path": path}, tmp_path / "ok", task="nli", teacher={})[0]["rows"] == 3


def test_missing_empty_and_corrupt_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no jsonl file at"):
        prepare({"kind": "jsonl", "path": str(tmp_path / "nope.jsonl")}, tmp_path / "out")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UsageError, match=r"empty.jsonl: the file is empty \(no rows\)"):
        prepare({"kind": "jsonl", "path": str(tmp_path / "empty.jsonl")}, tmp_path / "out")
    pq.write_table(pa.Table.from_pylist(nli_rows(50)), tmp_path / "cut.parquet")
    data = (tmp_path / "cut.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"cut.parquet: not a readable Parquet file, truncated or corrupt"):
        prepare({"kind": "parquet", "path": str(tmp_path / "cut.parquet")}, tmp_path / "out", task="nli")
