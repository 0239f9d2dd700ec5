"""The vllm backend through Ray Data on CPU: vLLM's CPU build, a tiny offline model."""

from __future__ import annotations

import pytest

from kdist.config import RunConfig, TeacherSection
from kdist.runtime import ray_session
from kdist.teachers.vllm import VLLMTeacher, top_logprobs_from_vllm

pytestmark = pytest.mark.slow


def test_top_logprobs_keep_the_best_k_whatever_the_sampled_token():
    steps = [{7: {"logprob": -0.1, "rank": 1}, 3: {"logprob": -2.0, "rank": 2}, 9: {"logprob": -5.0, "rank": 9}}]
    assert top_logprobs_from_vllm(steps, 2) == [{"token_ids": [7, 3], "logprobs": [-0.1, -2.0]}]


def test_vllm_backend_answers_every_row_through_ray_data(tiny_model_dir, make_requests):
    pytest.importorskip("vllm")
    import ray

    section = TeacherSection(
        kind="vllm", model=str(tiny_model_dir), batch_size=16, replicas=1,
        sampling={"max_tokens": 4, "top_logprobs": 2},
        engine_kwargs={"max_model_len": 128, "dtype": "float32"},
    )  # fmt: skip
    config = RunConfig(teacher=section, student={"model": str(tiny_model_dir)}, runtime={"num_cpus": 2})
    requests = make_requests(40)
    rows = [{"id": r.id, "request_hash": r.request_hash, "messages": r.messages} for r in requests]
    with ray_session(config):
        out = VLLMTeacher(section, use_gpu=False).transform(ray.data.from_items(rows)).take_all()
    assert sorted(row["id"] for row in out) == sorted(r.id for r in requests)
    for row in out:
        assert row["error"] is None, row["error"]
        assert row["teacher"] == f"vllm:{tiny_model_dir}"
        assert row["prompt_tokens"] > 5 and 1 <= row["completion_tokens"] <= 4
        assert len(row["top_logprobs"]) == row["completion_tokens"]
        assert len(row["top_logprobs"][0]["token_ids"]) == 2
