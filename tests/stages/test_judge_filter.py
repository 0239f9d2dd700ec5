"""The judges and the filter on small tables the test writes: the rule's scores, an LLM
judge on the loopback server (verdicts scripted through a replaced template), the inclusive
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
    rows = storage.read_table(str(root / "judgements" / "scores")).to_pylist()
    assert summary == {"rows": 15, "passed": 5, "unparsable": 5, "errors": 5}
    assert {row["id"]: row["score"] for row in rows} == {i: float(k == "ok") for i, k in kinds.items()}
    assert {row["candidate"] for row in rows} == {"teacher"}
    by_kind = {kinds[row["id"]]: row["rationale"] for row in rows}
    assert by_kind == {"ok": "answer parses for the task", "unparsable": "answer does not parse for the task",
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


# The loopback server answers a prompt that is no multiple-choice question with "ok: " and the
# first words of the prompt: this template scripts the verdict from the answer being judged
# (the right letter scores 5 of 5, anything else 2), and so also shows that a user's template
# replaces the rubric's own.
SCRIPTED_TEMPLATE = "Score: {{ 5 if answer == reference else 2 }} because {{ answer }} from {{ scale_low }}-{{ scale_high }}\n"


def test_llm_judge_grades_through_the_batch_layer_and_the_filter_keeps_what_passes(run_dir, tmp_path):
    from kdist.testing.llm_server import LLMServer, ServerSettings

    root, kinds = run_dir
    template = tmp_path / "verdict.j2"
    template.write_text(SCRIPTED_TEMPLATE)
    with LLMServer(ServerSettings()) as server:
        judge = {"kind": "openai", "model": "judge-m", "endpoint": server.openai_base_url, "rubric": "reference_guided",
                 "template": str(template), "scale": "1-5", "min_score": 0.75}  # fmt: skip
        context = StageContext(validate_config({"teacher": {"model": "t"}, "student": {"model": "s"},
                                                "run": {"output_dir": str(root)}, "judge": judge}), str(root))  # fmt: skip
        summary = BY_NAME["judge"].run(context)
        again = BY_NAME["judge"].run(context)  # exact resume: nothing is asked twice
        assert again["inference"]["this_run"]["requested"] == 0
        assert server.stats()["total"] == 10
    rows = {row["id"]: row for row in storage.read_table(str(root / "judgements" / "scores")).to_pylist()}
    # Error rows are never sent to the judge; the right letter scores 5 (1.0), the rest 2 (0.25).
    assert set(rows) == {i for i, k in kinds.items() if k != "error"}
    for i, row in rows.items():
        assert row["judge"] == "openai:judge-m" and row["rubric"] == "reference_guided" and row["status"] == "ok"
        assert (row["raw_score"], row["score"]) == ((5.0, 1.0) if kinds[i] == "ok" else (2.0, 0.25))
        assert row["request_hash"]
    assert summary["rows"] == 10 and summary["passed"] == 5 and summary["unparsable"] == 0
    BY_NAME["filter"].run(context)
    kept = {row["id"] for split in ("train", "validation") for row in storage.read_table(str(root / "sft" / split)).to_pylist()}
    assert kept == {i for i, k in kinds.items() if k == "ok" and not i.startswith("test-")}


def test_llm_judge_needs_what_its_rubric_grades_against(run_dir):
    from kdist.errors import UsageError

    root, _ = run_dir
    judge = {"kind": "openai", "model": "j", "endpoint": "http://127.0.0.1:9/v1", "rubric": "groundedness"}
    context = StageContext(validate_config({"teacher": {"model": "t"}, "student": {"model": "s"},
                                            "run": {"output_dir": str(root)}, "judge": judge}), str(root))  # fmt: skip
    with pytest.raises(UsageError, match=r"row with id '.+': judge.rubric groundedness needs a context passage"):
        BY_NAME["judge"].run(context)


# A sampled judge: the loopback server gives the n-th ask of one prompt the n-th reply of the
# rule's list, so the three samples of a right letter read 5, 4 and nothing (whatever order
# they arrive in), and those of the unsure answer never read.
SAMPLED_TEMPLATE = "Grade {{ answer }} ({{ scale_low }}-{{ scale_high }}) for: {{ question }}\n"
SAMPLED_RULES = [[r"^Grade [A-E] \(", ["Score: 5", "Score: 4", "I cannot tell"]],
                 [r"^Grade I am not sure \(", ["hmm", "no idea", "maybe"]]]  # fmt: skip


def test_a_sampled_judge_scores_the_mean_of_its_parsable_samples_and_resumes_exactly(run_dir, tmp_path):
    import shutil

    from kdist.testing.llm_server import LLMServer, ServerSettings

    source, kinds = run_dir
    root = tmp_path / "run"
    for part in ("prompts", "responses"):
        shutil.copytree(source / part, root / part)
    (tmp_path / "sampled.j2").write_text(SAMPLED_TEMPLATE)
    graded = {i for i, k in kinds.items() if k != "error"}
    with LLMServer(ServerSettings(script=SAMPLED_RULES)) as server:

        def judged(samples: int) -> tuple[dict, dict]:
            judge = {"kind": "openai", "model": "judge-m", "endpoint": server.openai_base_url, "template": str(tmp_path / "sampled.j2"),
                     "samples": samples, "sampling": {"temperature": 0.7}, "min_score": 0.8}  # fmt: skip
            config = validate_config({"teacher": {"model": "t"}, "student": {"model": "s"}, "run": {"output_dir": str(root)}, "judge": judge})
            summary = BY_NAME["judge"].run(StageContext(config, str(root)))
            return summary, {row["id"]: row for row in storage.read_table(str(root / "judgements" / "scores")).to_pylist()}

        summary, rows = judged(3)
        assert sorted(server.stats()["requests"].values()) == [3] * len(graded)  # three asks of each prompt
        assert set(rows) == graded
        for i, row in rows.items():
            if kinds[i] == "ok":  # mean of 5 and 4; the unreadable third left out, not guessed
                assert (row["status"], row["raw_score"], row["score"]) == ("ok", 4.5, pytest.approx(0.875))
                assert (row["samples"], row["unparsable_samples"]) == (2, 1)
            else:
                assert (row["status"], row["raw_score"], row["score"], row["samples"], row["unparsable_samples"]) == ("unparsable", None, None, 0, 3)
            assert len(set(row["request_hash"].split(","))) == 3
        assert (summary["rows"], summary["passed"], summary["unparsable"], summary["unparsable_samples"]) == (10, 5, 5, 20)
        assert summary["inference"]["this_run"]["requested"] == 30

        # Exact resume: samples 0-2 are the same requests, stored under the same keys, so a
        # rerun with a fourth sample asks only for it.
        more, rows = judged(4)
        assert more["inference"]["this_run"]["requested"] == 10 and server.stats()["total"] == 40
    ok = [row for i, row in rows.items() if kinds[i] == "ok"]
    assert all(row["raw_score"] == pytest.approx(14 / 3) and row["samples"] == 3 for row in ok)  # 5, 4, 5 (the list cycles)
