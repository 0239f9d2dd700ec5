"""The rule judge and the filter on small tables the test writes: scores, the inclusive
threshold, error rows dropped, and held-out splits kept out of training."""

from __future__ import annotations

import pyarrow as pa
import pytest

from kdist import storage
from kdist.config import validate_config
from kdist.llm.store import ResponseStore, new_run_id
from kdist.rows import RESPONSE_SCHEMA
from kdist.stages import BY_NAME, StageContext
from support.prompts import synthetic_prompts, write_prompts

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Prompts of three splits and one teacher answer each: right letter, unparsable text,
    or an error row, by the row's index."""
    root = tmp_path_factory.mktemp("run")
    prompts = synthetic_prompts({"train": 9, "validation": 3, "test": 3})
    write_prompts(root, prompts)
    kinds = ["ok", "unparsable", "error"]
    answers = [
        {"id": p["id"], "candidate": "teacher", "request_hash": p["id"], "model": "t", "attempts": 1,
         "response": {"ok": p["reference"], "unparsable": "I am not sure", "error": None}[kinds[i % 3]],
         "error": "content_filter: filtered" if kinds[i % 3] == "error" else None}
        for i, p in enumerate(prompts)
    ]  # fmt: skip
    ResponseStore(str(root / "responses")).write_shard(pa.Table.from_pylist(answers, schema=RESPONSE_SCHEMA), new_run_id())
    return root, {p["id"]: kinds[i % 3] for i, p in enumerate(prompts)}


def _context(root, **judge) -> StageContext:
    config = validate_config({"teacher": {"model": "t"}, "student": {"model": "s"}, "run": {"output_dir": str(root)},
                              "judge": {"kind": "rule", **judge}})  # fmt: skip
    return StageContext(config, str(root))


def test_rule_judge_scores_parsable_answers_only(run_dir):
    root, kinds = run_dir
    summary = BY_NAME["judge"].run(_context(root))
    rows = storage.read_table(str(root / "judgements")).to_pylist()
    assert summary == {"rows": 15, "passed": 5}
    assert {row["id"]: row["score"] for row in rows} == {i: float(k == "ok") for i, k in kinds.items()}
    assert {row["candidate"] for row in rows} == {"teacher"}
    by_kind = {kinds[row["id"]]: row["rationale"] for row in rows}
    assert by_kind == {"ok": "answer parses for the task", "unparsable": "answer names no allowed choice",
                       "error": "the teacher returned no answer"}  # fmt: skip


@pytest.mark.parametrize(("min_score", "kept_kinds"), [(1.0, {"ok"}), (0.0, {"ok", "unparsable"})])
def test_filter_keeps_passed_answers_of_training_splits_only(run_dir, min_score, kept_kinds):
    root, kinds = run_dir
    BY_NAME["judge"].run(_context(root))
    summary = BY_NAME["filter"].run(_context(root, min_score=min_score))
    kept = {split: storage.read_table(str(root / "sft" / split)).to_pylist() for split in ("train", "validation")}
    assert summary["kept"] == {split: len(rows) for split, rows in kept.items()}
    for split, rows in kept.items():
        expected = {i for i, k in kinds.items() if i.startswith(f"{split}-") and k in kept_kinds}
        assert {row["id"] for row in rows} == expected
        for row in rows:  # the prompt plus the teacher's answer; error rows never, even at 0
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["messages"][1]["content"]
    assert not storage.exists(str(root / "sft" / "test"))
