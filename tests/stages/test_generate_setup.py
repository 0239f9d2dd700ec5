"""Setup problems of the generate stage fail in one line before any work starts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdist.config import RunConfig
from kdist.errors import UsageError
from kdist.generate import read_prompts, run_generate, with_answer
from kdist.rows import PROMPT_SCHEMA


def _config(**teacher) -> RunConfig:
    return RunConfig(teacher={"kind": "openai", "model": "m", "endpoint": "http://127.0.0.1:9/v1", **teacher}, student={"model": "x"})


def test_named_but_unset_key_variable_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KDIST_UNSET_KEY", raising=False)
    with pytest.raises(UsageError, match="KDIST_UNSET_KEY"):
        run_generate(_config(api_key_env="KDIST_UNSET_KEY"), tmp_path / "prompts.parquet", tmp_path / "out")


def test_repeated_prompt_ids_are_refused(tmp_path):
    row = {"id": "q1", "task": "multiple_choice", "messages": [{"role": "user", "content": "?"}], "split": "train", "meta": "{}"}
    pq.write_table(pa.Table.from_pylist([row, row], schema=PROMPT_SCHEMA), tmp_path / "p.parquet")
    with pytest.raises(UsageError, match="id 'q1' appears 2 times"):
        read_prompts(str(tmp_path / "p.parquet"), ["train"])


@pytest.mark.parametrize(
    ("text", "answer", "status"),
    [("B", "B", "ok"), ("The answer is c", "C", "ok"), ("F", None, "unparsable"), ("I cannot say", None, "unparsable")],
)
def test_multiple_choice_answers_are_parsed_and_raw_text_kept(text, answer, status):
    row = with_answer({"response": text, "error": None}, "multiple_choice", '{"choices": ["a", "b", "c", "d", "e"]}')
    assert (row["answer"], row["parse_status"], row["response"]) == (answer, status, text)


def test_error_rows_are_not_parsed():
    row = with_answer({"response": None, "error": "content_filter: filtered"}, "multiple_choice", "{}")
    assert (row["answer"], row["parse_status"]) == (None, "error")
