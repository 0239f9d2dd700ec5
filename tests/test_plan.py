"""`kdist plan`: rows, tokens, cost and wall time before any request, checked against what a
run then reports (the endpoint's own token counts) and against the loopback server."""

import json

import pytest

from kdist.cli import main
from kdist.config import validate_config
from kdist.plan import plan_generate
from kdist.stages import BY_NAME, StageContext
from kdist.testing.llm_server import LLMServer, ServerSettings
from support.prompts import synthetic_prompts, write_prompts

SIZES = {"teacher_train": 4, "train": 30, "validation": 6, "test": 6}
PRICES = {"input_per_million_tokens": 2.0, "output_per_million_tokens": 8.0}


def remote_config(tmp_path, url: str = "http://127.0.0.1:9/v1", **teacher) -> object:
    section = {"kind": "openai", "model": "m", "endpoint": url, "prices": PRICES, "sampling": {"max_tokens": 16}, **teacher}
    return validate_config({"teacher": section, "student": {"model": "s"}, "run": {"output_dir": str(tmp_path)}})


def test_rows_tokens_cost_and_the_rate_limit_bound_without_a_request(tmp_path):
    prompts = synthetic_prompts(SIZES)
    write_prompts(tmp_path, prompts)
    plan = plan_generate(remote_config(tmp_path, requests_per_minute=60), str(tmp_path))
    assert (plan.rows, plan.answered, plan.to_ask) == (42, 0, 42)  # train + validation + test
    assert plan.input_tokens_method.startswith("heuristic")
    chars = sum(len(m["content"]) for p in prompts if p["split"] != "teacher_train" for m in p["messages"])
    assert chars / 4 < plan.input_tokens < chars / 4 + 42 * 10
    assert plan.output_tokens_max == 42 * 16 and plan.output_tokens_estimate is None
    assert plan.cost == {"low": round(plan.input_tokens * 2.0 / 1e6, 4), "high": round((plan.input_tokens * 2.0 + 42 * 16 * 8.0) / 1e6, 4),
                         "estimate": None, "currency": "USD"}  # fmt: skip
    assert (plan.minimum_wall_seconds, plan.limited_by) == (42.0, "requests_per_minute")


def test_a_sample_estimates_output_tokens_and_latency_and_nothing_else_is_asked(tmp_path):
    write_prompts(tmp_path, synthetic_prompts(SIZES))
    with LLMServer(ServerSettings(latency_s=0.05)) as server:
        plan = plan_generate(remote_config(tmp_path, server.openai_base_url, concurrency=2), str(tmp_path), sample=4)
        assert server.stats()["total"] == 4
    # The loopback server answers a multiple-choice prompt with one letter: one token.
    assert plan.sample["answered"] == 4 and plan.sample["mean_completion_tokens"] == 1.0
    assert plan.output_tokens_estimate == 42
    assert plan.limited_by == "latency x slots" and plan.minimum_wall_seconds >= 42 * 0.05 / 2 * 0.9


def test_plan_before_prepare_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"teacher": {"model": "t"}, "student": {"model": "s"}, "run": {"output_dir": str(tmp_path / "out")}}))
    assert main(["plan", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `kdist prepare` with this config first" in err


@pytest.mark.usefixtures("local_ray")
def test_the_input_estimate_with_a_local_tokenizer_matches_what_the_run_reports(tmp_path, tiny_model_dir):
    write_prompts(tmp_path, synthetic_prompts({"train": 24}))
    config = validate_config({"teacher": {"kind": "hf", "model": str(tiny_model_dir), "splits": ["train"], "batch_size": 8,
                                          "sampling": {"max_tokens": 2}},
                              "student": {"model": "s"}, "run": {"output_dir": str(tmp_path)}})  # fmt: skip
    before = plan_generate(config, str(tmp_path))
    assert before.input_tokens_method.startswith("the teacher's tokenizer")
    summary = BY_NAME["generate"].run(StageContext(config, str(tmp_path)))
    assert abs(before.input_tokens - summary["prompt_tokens"]) <= 0.1 * summary["prompt_tokens"]
    after = plan_generate(config, str(tmp_path))
    assert (after.answered, after.to_ask, after.input_tokens) == (24, 0, 0)


def test_a_batch_teacher_is_planned_by_the_batch_window_and_not_sampled(tmp_path):
    from kdist.errors import UsageError
    from kdist.plan import BATCH_WINDOW, format_plan

    write_prompts(tmp_path, synthetic_prompts(SIZES))
    config = remote_config(tmp_path, kind="openai_batch", requests_per_minute=60)
    plan = plan_generate(config, str(tmp_path))
    assert plan.to_ask == 42 and (plan.minimum_wall_seconds, plan.limited_by) == (None, BATCH_WINDOW)
    assert f"wall time: {BATCH_WINDOW}" in format_plan(plan)
    with pytest.raises(UsageError, match="kind=openai"):
        plan_generate(config, str(tmp_path), sample=2)
