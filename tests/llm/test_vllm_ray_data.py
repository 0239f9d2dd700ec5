"""The vllm backend through Ray Data on CPU (vLLM's CPU build, a tiny offline model), driven by
the generate stage through the batch-inference layer: every prompt answered once, with usage and top-k logprobs as token ids;
then the same model as the judge stage's LLM judge."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdist.config import RunConfig
from kdist.llm.vllm import top_logprobs_from_vllm
from kdist.rows import PROMPT_SCHEMA
from kdist.runtime import ray_session
from kdist.stages import BY_NAME, StageContext

pytestmark = pytest.mark.slow


def test_top_logprobs_keep_the_best_k_whatever_the_sampled_token():
    steps = [{7: {"logprob": -0.1, "rank": 1}, 3: {"logprob": -2.0, "rank": 2}, 9: {"logprob": -5.0, "rank": 9}}]
    assert top_logprobs_from_vllm(steps, 2) == [{"token_ids": [7, 3], "logprobs": [-0.1, -2.0]}]


def test_generate_stage_with_the_vllm_backend(tiny_model_dir, make_requests, tmp_path):
    pytest.importorskip("vllm")
    requests = make_requests(40)
    prompts = [
        {"id": r.id, "task": "multiple_choice", "messages": r.messages, "reference": None, "split": "train", "meta": '{"choices": ["red", "green", "blue"]}'}
        for r in requests
    ]  # fmt: skip
    (tmp_path / "prompts").mkdir()
    pq.write_table(pa.Table.from_pylist(prompts, schema=PROMPT_SCHEMA), tmp_path / "prompts" / "part-0.parquet")
    # enforce_eager: torch.compile of a tiny model is only startup cost (about 35 s per engine on
    # 2 cores), and what is tested is the layer around the engine.
    section = {
        "kind": "vllm", "model": str(tiny_model_dir), "batch_size": 16, "replicas": 1, "splits": ["train"],
        "sampling": {"max_tokens": 4, "top_logprobs": 2}, "engine_kwargs": {"max_model_len": 128, "dtype": "float32", "enforce_eager": True},
        "min_success_ratio": 1.0,
    }  # fmt: skip
    # The same tiny model as an LLM judge, through the same layer (its random verdicts are
    # mostly unreadable: what counts here is that every answer is asked and accounted for).
    (tmp_path / "judge.j2").write_text("Rate from {{ scale_low }} to {{ scale_high }}: {{ answer }}")
    judge = {
        "kind": "vllm", "model": str(tiny_model_dir), "batch_size": 16, "template": str(tmp_path / "judge.j2"),
        "sampling": {"max_tokens": 4}, "engine_kwargs": {"max_model_len": 128, "dtype": "float32", "enforce_eager": True},
    }  # fmt: skip
    config = RunConfig(teacher=section, judge=judge, student={"model": "unused"},
                       runtime={"num_cpus": 2, "log_to_driver": False})  # fmt: skip
    with ray_session(config):
        summary = BY_NAME["generate"].run(StageContext(config, str(tmp_path)))
        judged = BY_NAME["judge"].run(StageContext(config, str(tmp_path)))
    assert judged["rows"] == 40 and judged["inference"]["done"] == 40 and judged["errors"] == 0
    for row in pq.read_table(tmp_path / "judgements" / "scores").to_pylist():
        assert row["judge"] == f"vllm:{tiny_model_dir}" and row["status"] in ("ok", "unparsable")
        assert (row["score"] is None) == (row["status"] == "unparsable")
    rows = pq.read_table(tmp_path / "responses" / "answers").to_pylist()
    assert sorted(row["id"] for row in rows) == sorted(r.id for r in requests)
    assert summary["done"] == 40 and summary["failed"] == {}
    for row in rows:
        assert row["error"] is None and row["model"] == f"vllm:{tiny_model_dir}" and row["candidate"] == "teacher"
        assert row["prompt_tokens"] > 5 and 1 <= row["completion_tokens"] <= 4
        assert len(row["top_logprobs"]) == row["completion_tokens"]
        assert len(row["top_logprobs"][0]["token_ids"]) == 2
