"""The evaluate stage: its config (models, judge, comparisons), and one run through Ray with a
local base student, a remote student named by the train stage's output, the teacher's stored
answers and a scripted pairwise judge on the loopback server."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest

from kdist import storage
from kdist.config import ConfigError, validate_config
from kdist.llm.store import ResponseStore
from kdist.rows import RESPONSE_SCHEMA
from kdist.stages import StageContext, evaluation_judge
from kdist.testing.llm_server import LLMServer, ServerSettings, deterministic_answer
from support.prompts import synthetic_prompts, write_prompts

BASE = {"teacher": {"model": "t"}, "student": {"model": "s"}}


def _evaluate(section: dict, **top) -> object:
    return validate_config({**BASE, **top, "evaluate": section})


def test_the_default_models_and_comparisons():
    config = validate_config(BASE)
    assert [m.name for m in config.evaluate.models] == ["base", "student", "teacher"]
    assert config.evaluate.comparisons == [["student", "base"], ["student", "teacher"]]
    assert config.evaluate.teacher_sample == 0 and evaluation_judge(config) is None  # the rule judge compares nothing


def test_models_by_name_or_with_an_endpoint_and_a_model_file():
    config = _evaluate({"models": ["base", {"name": "student", "model_file": "hosted.json",
                                            "endpoint": {"kind": "openai", "endpoint": "http://127.0.0.1:1/v1"}}],
                        "comparisons": [["student", "base"]]})  # fmt: skip
    student = config.evaluate.models[1]
    assert student.endpoint.kind == "openai" and student.model_file == "hosted.json"


def test_the_pairwise_judge_is_evaluate_judge_else_a_model_judge_of_the_run():
    judge = {"kind": "openai", "model": "j", "endpoint": "http://127.0.0.1:1/v1"}
    assert evaluation_judge(_evaluate({}, judge=judge)).model == "j"
    own = _evaluate({"judge": {**judge, "model": "pairwise", "template": "mine.j2"}}, judge=judge)
    assert evaluation_judge(own).model == "pairwise" and own.evaluate.judge.template == "mine.j2"
    assert evaluation_judge(_evaluate({"judge": {"kind": "hf", "model": "/models/judge"}})).kind == "hf"


@pytest.mark.parametrize(("section", "message"), [
    ({"models": ["base", "gpt"]}, "model 'gpt' needs an endpoint"),
    ({"models": ["base", "student", "base"]}, "names a model twice"),
    ({"comparisons": [["student", "student"]]}, "evaluate.comparisons[0] must be two different model names"),
    ({"models": ["base", "student"]}, "evaluate.comparisons[1] names 'teacher', not one of evaluate.models (base, student)"),
    ({"models": [{"name": "student", "model_file": "x.json"}], "comparisons": []}, "model_file needs an endpoint"),
    ({"judge": {"kind": "rule"}}, "evaluate.judge"),
    ({"teacher_sample": -1}, "evaluate.teacher_sample"),
])  # fmt: skip
def test_bad_evaluate_settings_fail_in_one_line_naming_them(section, message):
    with pytest.raises(ConfigError) as err:
        _evaluate(section)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- one run through Ray ---------------------------------------------------------------------

# A scripted judge: a one-letter answer beats anything longer; two alike are a tie. It sees the
# question and the answers only (the template has no reference to show).
JUDGE = ("Verdict: {{ 'tie' if (answer_a|length < 3) == (answer_b|length < 3) else "
         "('A' if answer_a|length < 3 else 'B') }}\n")


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_evaluate_scores_compares_and_reports(tmp_path, tiny_model_dir):
    from kdist.stages.evaluate import run

    prompts = synthetic_prompts({"test": 12}, seed=3)
    write_prompts(tmp_path, prompts)
    teacher = ResponseStore(str(tmp_path / "responses"))
    teacher.write_shard(pa.Table.from_pylist([  # the teacher's stored answers: right but for two
        {"id": p["id"], "candidate": "teacher", "request_hash": f"h{n}", "model": "openai:teacher",
         "response": p["reference"] if n >= 2 else "no idea", "prompt_tokens": 40, "completion_tokens": 1,
         "seconds": 0.5, "attempts": 1} for n, p in enumerate(prompts)], schema=RESPONSE_SCHEMA), "r0")  # fmt: skip
    (tmp_path / "student").mkdir()
    # Not an `ft:` name: the loopback server answers those only for a fine-tuning job it ran.
    (tmp_path / "student" / "hosted.json").write_text(json.dumps({"model": "tiny-student"}))
    (tmp_path / "student" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)))
    (tmp_path / "judge.j2").write_text(JUDGE)
    base_model = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, base_model)
    with LLMServer(ServerSettings()) as server:
        remote = {"kind": "openai", "endpoint": server.openai_base_url, "concurrency": 4,
                  "prices": {"input_per_million_tokens": 1.0, "output_per_million_tokens": 2.0}}
        config = validate_config({
            "run": {"output_dir": str(tmp_path)}, "teacher": {"model": "teacher"}, "student": {"model": str(base_model)},
            "evaluate": {"kind": "hf", "batch_size": 6, "sampling": {"max_tokens": 4},
                         "models": ["base", {"name": "student", "model_file": "hosted.json", "endpoint": remote}, "teacher"],
                         "judge": {"kind": "openai", "model": "judge", "endpoint": server.openai_base_url,
                                   "template": str(tmp_path / "judge.j2")}},
        })  # fmt: skip
        summary = run(StageContext(config, str(tmp_path)))
        # The student's 12 answers, then the judge. Resume is the batch layer's (tests/llm) and
        # compare's (tests/judging): not run again here.
        judged = server.stats()["total"] - 12
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["accuracy"] == metrics["accuracy"]
    results = storage.read_table(str(tmp_path / "eval" / "results.parquet")).to_pylist()
    right = {(r["id"], r["model"]): r["correct"] for r in results}
    # The remote student answers what the loopback server gives each prompt, scored here.
    expected = sum(deterministic_answer(p["messages"]) == p["reference"] for p in prompts) / 12
    assert metrics["accuracy"]["student"] == pytest.approx(expected, abs=1e-4)
    assert metrics["accuracy"]["teacher"] == pytest.approx(10 / 12, abs=1e-4)
    assert metrics["models"]["student"]["label"] == "openai:tiny-student"
    assert metrics["chance"] == {"accuracy": 0.2}
    base, student, teacher = (metrics["metrics"][m]["accuracy"] for m in ("base", "student", "teacher"))
    assert metrics["recovered"]["accuracy"] == pytest.approx((student - base) / (teacher - base), abs=1e-3)
    # The judge prefers the one-letter answer: the student's letters beat the base's 4 tokens
    # of a random model wherever the base wrote more than two characters.
    compared = storage.read_table(str(tmp_path / "eval" / "comparisons.parquet")).to_pylist()
    vs_base = [c for c in compared if c["second"] == "base"]
    assert len(vs_base) == 12 and all(c["outcome"] in ("first", "tie") for c in vs_base)
    stats = metrics["comparisons"]["student_vs_base"]
    assert stats["wins"] == sum(c["outcome"] == "first" for c in vs_base) and stats["n"] == 12 and stats["flips"] == 0
    decided = [c for c in vs_base if right[(c["id"], "student")] != right[(c["id"], "base")]]
    if decided:
        assert stats["judge_accuracy"] == pytest.approx(
            sum((c["outcome"] == "first") == right[(c["id"], "student")] for c in decided) / len(decided), abs=1e-4)
    # One judge store for both comparisons. This template renders only the verdict, so judge
    # prompts repeat: the first comparison asks all 24 of its own, the second only those whose
    # text the first did not ask (the others get the stored answer copied under their key).
    asked_first = {v for c in vs_base for v in (c["verdict_in_order"], c["verdict_swapped"])}
    new_in_second = sum(v not in asked_first for c in compared if c["second"] == "teacher"
                        for v in (c["verdict_in_order"], c["verdict_swapped"]))  # fmt: skip
    assert judged == 2 * 12 + new_in_second and new_in_second < 2 * 12
    assert all(c["outcome"] is not None for c in compared) and len(compared) == 24
    vs_teacher = metrics["comparisons"]["student_vs_teacher"]
    assert vs_teacher["losses"] == 0 and vs_teacher["wins"] == 2  # "no idea" is longer than a letter
    speed = metrics["speed"]
    assert speed["student"]["answers"] == 12 and speed["student"]["cost_per_1000_answers"] > 0
    assert speed["base"]["latency_s"]["p50"] > 0 and speed["teacher"]["latency_s"]["p50"] == 0.5
    assert speed["teacher"]["tokens_per_s"] is None  # stored answers: no wall time measured here
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "student_vs_base" in report and "## Worst rows" in report and "(loss.png)" in report
