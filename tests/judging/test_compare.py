"""Pairwise comparison through the batch-inference layer against the loopback server, whose
verdicts are scripted by the template (it answers "ok: " and the prompt's first words)."""

import pytest

from kdist.config import validate_config
from kdist.judging.compare import compare
from kdist.testing.llm_server import LLMServer, ServerSettings

pytestmark = pytest.mark.usefixtures("local_ray")

FAIR = "Verdict: {{ 'tie' if answer_a == answer_b else ('A' if answer_a.startswith('good') else 'B') }}\n"
FIRST_SHOWN = "Verdict: A ({{ answer_a }} {{ answer_b }})\n"  # a judge that follows the position


def rows(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Question {i}?"}], "meta": "{}",
             "answers": {"student": a, "base": b}} for i, (a, b) in enumerate(pairs)]  # fmt: skip


def judge(url: str):
    return validate_config({"teacher": {"model": "t"}, "student": {"model": "s"},
                            "judge": {"kind": "openai", "model": "judge", "endpoint": url}}).judge  # fmt: skip


def test_a_fair_judge_in_both_orders(tmp_path):
    (tmp_path / "fair.j2").write_text(FAIR)
    pairs = [("good answer", "bad")] * 4 + [("good", "good")] * 2 + [("bad", "good one")]
    with LLMServer(ServerSettings()) as server:
        result, compared = compare(rows(pairs), "student", "base", judge(server.openai_base_url), str(tmp_path / "store"),
                                   template=str(tmp_path / "fair.j2"))  # fmt: skip
        assert server.stats()["total"] == 14  # two orders per prompt
        again, _ = compare(rows(pairs), "student", "base", judge(server.openai_base_url), str(tmp_path / "store"),
                           template=str(tmp_path / "fair.j2"))  # fmt: skip
        assert server.stats()["total"] == 14, "a rerun asked the judge again"
    assert (result.wins, result.losses, result.ties, result.flips, result.invalid) == (4, 1, 2, 0, 0)
    assert result.win_rate == pytest.approx(4 / 5) and result.tie_rate == pytest.approx(2 / 7)
    assert again == result
    assert [c.outcome for c in compared] == ["first"] * 4 + ["tie"] * 2 + ["second"]
    assert compared[0].verdict_in_order == "A" and compared[0].verdict_swapped == "B"


def test_a_judge_that_follows_the_position_flips_every_pair_into_a_tie(tmp_path):
    (tmp_path / "biased.j2").write_text(FIRST_SHOWN)
    with LLMServer(ServerSettings()) as server:
        result, _ = compare(rows([("good", "bad")] * 3), "student", "base", judge(server.openai_base_url),
                            str(tmp_path / "store"), template=str(tmp_path / "biased.j2"))  # fmt: skip
    assert (result.ties, result.flips, result.flip_rate, result.win_rate) == (3, 3, 1.0, None)
