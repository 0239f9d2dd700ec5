"""A generated source with vLLM's CPU build as the writer (a tiny random model, no hub):
dialogue augmentation through prepare, each conversation asked once through ray.data.llm and
every answer accounted for (a random model's follow-ups rarely parse: they are counted, and
the originals are kept)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from kdist.config import RunConfig
from kdist.runtime import ray_session
from kdist.stages import BY_NAME, StageContext

pytestmark = pytest.mark.slow


def test_dialogue_augmentation_with_a_vllm_writer(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    chats = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Question {i}: pick one."},
                                          {"role": "assistant", "content": "A) red"}]} for i in range(12)]  # fmt: skip
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    (tmp_path / "mine.j2").write_text("{% for t in conversation %}{{ t.content }} {% endfor %}Answer with the letter only.")
    writer = {"kind": "vllm", "model": str(tiny_model_dir), "batch_size": 8, "sampling": {"max_tokens": 8},
              "engine_kwargs": {"max_model_len": 128, "dtype": "float32", "enforce_eager": True}}  # fmt: skip
    source = {"kind": "dialogue_augmentation", "path": str(tmp_path / "chats.jsonl"), "template": str(tmp_path / "mine.j2"), "writer": writer}
    config = RunConfig(data={"task": "conversation", "source": source}, teacher={"model": "t", "splits": ["train"]},
                       student={"model": "unused"}, runtime={"num_cpus": 2, "log_to_driver": False})  # fmt: skip
    with ray_session(config):
        summary = BY_NAME["prepare"].run(StageContext(config, str(tmp_path / "run")))
    generated = summary["generated"]
    assert generated["items"] == 12 and generated["inference"]["done"] == 12
    assert generated["parsed"] + generated["unparsable"] == 12 and generated["errors"] == 0
    answers = pq.read_table(tmp_path / "run" / "generated" / "answers" / "answers").to_pylist()
    assert sorted(row["id"] for row in answers) == sorted(c["id"] for c in chats)
    assert all(row["model"] == f"vllm:{tiny_model_dir}" and row["candidate"] == "writer" and row["completion_tokens"] >= 1 for row in answers)
    prompts = pq.read_table(tmp_path / "run" / "prompts").to_pylist()
    assert {row["id"] for row in prompts} >= {c["id"] for c in chats}  # the originals, kept
    assert len(prompts) == summary["rows"] == generated["rows"] - summary.get("duplicates_removed", 0)
