"""The generate stage on Ray Data against the fault-injecting endpoint: 2,000 rows, 30% of
them with transient faults, 5% with permanent ones. Every row is accounted for exactly once,
transient faults are retried to success, permanent ones come back as error rows with their
reason, a rerun asks only for what has no answer yet, and the output reads as plain Parquet.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from kdist.config import RunConfig
from kdist.export import export_chat_jsonl
from kdist.llm.remote import error_reason
from kdist.runtime import ray_session
from kdist.stages import BY_NAME, StageContext
from kdist.stages.generate import GenerationFailed
from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings, message_key
from support.prompts import synthetic_prompts, write_prompts

pytestmark = pytest.mark.slow

ROWS = 2000
PLAN = FaultPlan(
    transient={"rate_limit": 0.10, "server_error": 0.06, "unavailable": 0.05, "reset": 0.05, "malformed": 0.04},
    permanent={"content_filter": 0.03, "bad_request": 0.02},
    retry_after_s=0.02,
    seed=11,
)
PERMANENT_REASON = {"content_filter": "content_filter", "bad_request": "bad_request"}


def run_generate(config: RunConfig, run_dir) -> dict:
    return BY_NAME["generate"].run(StageContext(config, str(run_dir)))


def _config(endpoint: str, min_success_ratio: float) -> RunConfig:
    teacher = {
        "kind": "openai", "model": "teacher-under-test", "endpoint": endpoint, "api_key_env": "KDIST_TEST_KEY",
        "concurrency": 32, "batch_size": 50, "splits": ["train"], "min_success_ratio": min_success_ratio,
        "backoff_initial_s": 0.01, "backoff_max_s": 0.1, "max_attempts": 4,
        "prices": {"input_per_million_tokens": 2.5, "output_per_million_tokens": 10.0},
    }  # fmt: skip
    return RunConfig(teacher=teacher, student={"model": "unused"}, runtime={"num_cpus": 2, "log_to_driver": False})


def test_fault_mix_then_rerun(tmp_path, monkeypatch):
    monkeypatch.setenv("KDIST_TEST_KEY", "k")
    prompts = synthetic_prompts({"train": ROWS, "validation": 1})
    prompts_path, out_dir = write_prompts(tmp_path, prompts), tmp_path / "responses"
    prompts = [row for row in prompts if row["split"] == "train"]
    keys = {p["id"]: message_key(p["messages"]) for p in prompts}
    faults = {row_id: PLAN.fault_for(key, 1) for row_id, key in keys.items()}
    permanent = {i for i, f in faults.items() if f in PERMANENT_REASON}
    transient = {i for i, f in faults.items() if f and f not in PERMANENT_REASON}
    assert 0.27 < len(transient) / ROWS < 0.33 and len(permanent) > 50

    with LLMServer(ServerSettings(faults=PLAN)) as server, ray_session(_config(server.openai_base_url, 0.9)):
        summary = run_generate(_config(server.openai_base_url, 0.9), tmp_path)
        first_counts = server.stats()["requests"]

        table = pq.read_table(out_dir / "answers")
        rows = {row["id"]: row for row in table.to_pylist()}
        assert table.num_rows == ROWS == len(rows)  # every row once, no duplicates
        assert set(rows) == set(keys)
        for row_id, row in rows.items():
            assert first_counts[keys[row_id]] == row["attempts"], row_id  # each attempt seen once
            if row_id in permanent:
                assert error_reason(row["error"]) == PERMANENT_REASON[faults[row_id]]
                assert (row["status"], row["attempts"], row["response"]) == (400, 1, None)
            else:
                assert row["error"] is None and row["response"] in "ABCDE" and row["candidate"] == "teacher"
                assert row["attempts"] == PLAN.failing_attempts(keys[row_id]) + 1
        assert summary["done"] == ROWS - len(permanent)
        assert summary["failed"] == dict(Counter(PERMANENT_REASON[faults[i]] for i in permanent))
        assert (summary["requests"], summary["missing"], summary["duplicates_dropped"]) == (ROWS, 0, 0)
        assert summary["this_run"]["retried"] == len(transient)
        assert summary["estimated_cost"] == pytest.approx(
            (summary["prompt_tokens"] * 2.5 + summary["completion_tokens"] * 10.0) / 1e6, abs=1e-6
        )

        # A stricter minimum fails the run (non-zero exit); the rerun asks only the failed rows.
        with pytest.raises(GenerationFailed, match="min_success_ratio"):
            run_generate(_config(server.openai_base_url, 0.99), tmp_path)
        second_counts = server.stats()["requests"]

    asked_again = {i for i in keys if second_counts[keys[i]] != first_counts.get(keys[i], 0)}
    assert asked_again == permanent
    table = pq.read_table(out_dir / "answers")
    assert table.num_rows == ROWS == len(set(table["id"].to_pylist()))
    saved = json.loads((out_dir / "summary.json").read_text())
    assert saved["this_run"]["requested"] == len(permanent)

    # The output is plain Parquet for `datasets`, and exports as chat JSONL.
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=str(out_dir / "answers" / "*.parquet"), split="train")
    assert loaded.num_rows == ROWS
    counts = export_chat_jsonl(str(prompts_path), str(out_dir), str(tmp_path / "export"), ["train"])
    assert counts == {"train": ROWS - len(permanent)}
    first = json.loads((tmp_path / "export" / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][1]["content"] in "ABCDE"
