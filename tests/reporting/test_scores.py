"""The report's figures on hand-made cases: recovered share, judge accuracy, worst rows,
chance, serving speed."""

import pytest

from kdist.reporting.scores import judge_accuracy, recovered_share, worst_rows
from kdist.reporting.speed import serving_speed
from kdist.tasks import TASKS


def test_recovered_share_is_the_students_part_of_the_teachers_gain():
    shares, notes = recovered_share({"base": {"accuracy": 0.2, "rougeL": 0.1},
                                     "student": {"accuracy": 0.65, "rougeL": 0.1},
                                     "teacher": {"accuracy": 0.8, "rougeL": 0.5}})  # fmt: skip
    assert shares == {"accuracy": pytest.approx(0.75), "rougeL": pytest.approx(0.0)}
    assert notes == {}


def test_a_student_above_the_teacher_recovers_more_than_all_and_one_below_the_base_a_negative_share():
    shares, _ = recovered_share({"base": {"accuracy": 0.0}, "student": {"accuracy": 0.9}, "teacher": {"accuracy": 0.6}})
    assert shares["accuracy"] == pytest.approx(1.5)
    shares, _ = recovered_share({"base": {"accuracy": 0.5}, "student": {"accuracy": 0.4}, "teacher": {"accuracy": 0.9}})
    assert shares["accuracy"] == pytest.approx(-0.25)


@pytest.mark.parametrize(("base", "teacher"), [(0.3, 0.2), (0.2, 0.2)])  # worse than the base, and equal
def test_a_teacher_no_better_than_the_base_leaves_no_share_and_says_why(base, teacher):
    shares, notes = recovered_share({"base": {"accuracy": base}, "student": {"accuracy": 0.9}, "teacher": {"accuracy": teacher}})
    assert shares == {"accuracy": None}
    assert "no better than the base" in notes["accuracy"]


def test_a_lower_is_better_metric_gains_by_falling():
    shares, notes = recovered_share({"base": {"mae": 0.5}, "student": {"mae": 0.3}, "teacher": {"mae": 0.1}})
    assert shares["mae"] == pytest.approx(0.5) and not notes
    shares, notes = recovered_share({"base": {"mae": 0.1}, "student": {"mae": 0.3}, "teacher": {"mae": 0.5}})
    assert shares["mae"] is None and "no better" in notes["mae"]


def test_no_share_without_the_three_models_or_a_value():
    shares, notes = recovered_share({"base": {"accuracy": 0.1}, "student": {"accuracy": 0.5}})
    assert shares == {} and "teacher" in notes["*"]
    shares, notes = recovered_share({"base": {"mae": None}, "student": {"mae": 0.1}, "teacher": {"mae": 0.0}})
    assert shares == {"mae": None} and "no value" in notes["mae"]


def test_judge_accuracy_counts_only_pairs_the_labels_decide_and_a_tie_as_a_miss():
    outcomes = ["first", "second", "tie", "first", None, "second"]
    first_right = [True, True, True, False, True, True]
    second_right = [False, False, False, False, False, True]
    # Decided by the labels: rows 0-2 (first right) and 4 (no verdict: left out): 1 of 3 picked.
    assert judge_accuracy(outcomes, first_right, second_right) == pytest.approx(1 / 3, abs=1e-4)
    assert judge_accuracy(["first", "tie"], [True, False], [True, False]) is None


def test_worst_rows_are_where_the_student_falls_furthest_below_the_teacher():
    results = [{"id": i, "model": m, "score": s} for i, m, s in [
        ("a", "student", 1.0), ("a", "teacher", 1.0), ("b", "student", 0.0), ("b", "teacher", 1.0),
        ("c", "student", 0.5), ("c", "teacher", 1.0), ("d", "student", 0.0), ("d", "teacher", 0.0),
        ("e", "student", 0.0), ("e", "teacher", 1.0)]]  # fmt: skip
    assert worst_rows(results, 10) == ["b", "e", "c"]
    assert worst_rows(results, 1) == ["b"]
    without_teacher = [r for r in results if r["model"] == "student"]
    assert worst_rows(without_teacher, 10) == ["b", "d", "e", "c"]


def test_chance_of_a_choice_task_follows_its_choices():
    mc = TASKS["multiple_choice"]()
    assert mc.chance([{"choices": ["a", "b", "c", "d", "e"]}, {"choices": ["a", "b"]}]) == {"accuracy": pytest.approx(0.35)}
    assert TASKS["nli"]().chance([{}]) == {"accuracy": pytest.approx(1 / 3, abs=1e-4)}
    assert TASKS["qa"]().chance([{}]) == {}


def test_serving_speed_latency_throughput_and_cost():
    answers = [{"seconds": s, "prompt_tokens": 100, "completion_tokens": c} for s, c in [(0.1, 10), (0.2, 20), (0.3, 30), (1.0, 40)]]
    prices = {"input_per_million_tokens": 2.0, "output_per_million_tokens": 8.0, "currency": "EUR"}
    speed = serving_speed(answers, {"seconds": 2.0, "completion_tokens": 100}, prices)
    assert speed["answers"] == 4 and speed["latency_s"]["mean"] == pytest.approx(0.4)
    assert speed["latency_s"]["p50"] == pytest.approx(0.25) and speed["latency_s"]["p90"] == pytest.approx(0.79)
    assert speed["tokens_per_s"] == pytest.approx(50.0)
    # A mean answer: 100 prompt tokens at 2/M and 25 completion tokens at 8/M.
    assert speed["cost_per_1000_answers"] == pytest.approx(1000 * (100 * 2.0 + 25 * 8.0) / 1e6)
    assert speed["currency"] == "EUR"
    stored = serving_speed([{"seconds": None, "prompt_tokens": 1, "completion_tokens": 1}], None, None)
    assert stored["latency_s"] is None and stored["tokens_per_s"] is None and stored["cost_per_1000_answers"] is None
