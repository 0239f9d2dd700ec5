"""A task family end to end on the loopback endpoint: prepare -> generate -> judge -> filter.

math: GSM8K-style JSONL, the teacher on the loopback OpenAI server (which echoes a prompt's
first words: a number the math parser reads), the rule judge keeps answers that parse.
synthetic export: no teacher is asked; the export's completions are the answers filter keeps.
"""

from __future__ import annotations

import json

import pytest

from kdist import pipeline, storage
from kdist.config import validate_config
from kdist.llm.store import ResponseStore
from kdist.testing.llm_server import LLMServer, ServerSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

STAGES = ["prepare", "generate", "judge", "filter"]


def _config(tmp_path, data: dict, teacher: dict):
    return validate_config({
        "run": {"output_dir": str(tmp_path / "run")}, "runtime": {"num_cpus": 2, "log_to_driver": False},
        "data": data, "student": {"model": "unused"},
        "teacher": {"kind": "openai", "model": "m", "concurrency": 8, "batch_size": 16, **teacher},
    })  # fmt: skip


def _sft(tmp_path, split: str) -> list[dict]:
    return storage.read_table(str(tmp_path / "run" / "sft" / split)).to_pylist()


def test_math_from_jsonl_through_the_loopback_teacher(tmp_path):
    rows = [{"question": f"Tom has {i} apples and buys 3 more. How many now?", "answer": f"{i} + 3 = {i + 3}\n#### {i + 3}"}
            for i in range(40)]  # fmt: skip
    (tmp_path / "gsm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"task": "math", "source": {"kind": "jsonl", "path": str(tmp_path / "gsm.jsonl")},
            "splits": {"train": 30, "validation": 5, "test": 5}}  # fmt: skip
    with LLMServer(ServerSettings()) as server:
        config = _config(tmp_path, data, {"endpoint": server.openai_base_url, "splits": ["train", "validation"]})
        assert pipeline.run_stages(config, STAGES) == 0
        assert len(server.stats()["requests"]) == 35  # train and validation, once each
    train = _sft(tmp_path, "train")
    assert len(train) == 30 and len(_sft(tmp_path, "validation")) == 5
    assert train[0]["messages"][0]["content"].endswith('final answer on its own line as "#### <number>".')
    assert train[0]["messages"][-1]["role"] == "assistant"


def test_synthetic_export_answers_are_trained_on_without_asking_a_teacher(tmp_path):
    rows = [{"id": f"t{i}", "prompt": f"Ticket {i}: where is my parcel?", "completion": f"Parcel {i} ships today.",
             "quality": 5.0 if i % 4 else 4.9} for i in range(40)]  # fmt: skip
    (tmp_path / "export.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"task": {"kind": "qa", "columns": {"question": "prompt"}}, "splits": {"train": 0.8, "validation": 0.2},
            "source": {"kind": "synthetic_export", "path": str(tmp_path / "export.jsonl"), "score_field": "quality", "min_score": 4.9}}  # fmt: skip
    config = _config(tmp_path, data, {"endpoint": "http://127.0.0.1:9/v1", "splits": []})  # nothing listens there
    assert pipeline.run_stages(config, STAGES) == 0
    summary = storage.read_json(str(tmp_path / "run" / "prompts" / storage.SUCCESS_FILE))["summary"]
    assert summary["below_min_score"] == 10 and summary["source_answers"] == 30
    kept = _sft(tmp_path, "train") + _sft(tmp_path, "validation")
    assert len(kept) == 30 and {row["messages"][-1]["content"] for row in kept} == {f"Parcel {i} ships today." for i in range(40) if i % 4}
    answers = ResponseStore(str(tmp_path / "run" / "responses")).read_all(["candidate"])
    assert set(answers["candidate"].to_pylist()) == {"source"}
