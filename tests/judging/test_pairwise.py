"""Pairwise arithmetic against values computed by hand."""

import numpy as np
import pytest

from kdist.judging.pairwise import FIRST, SECOND, TIE, combine_orders, length_controlled_win_rate, summarize


@pytest.mark.parametrize(
    ("in_order", "swapped", "outcome", "flipped"),
    [
        ("A", "B", FIRST, False),  # both orders pick the first model
        ("B", "A", SECOND, False),
        ("tie", "tie", TIE, False),
        ("A", "A", TIE, True),  # the judge picked whatever came first: a flip, counted a tie
        ("A", "tie", TIE, True),
        (None, "B", None, False),  # unreadable in one order: invalid
    ],
)
def test_position_swap(in_order, swapped, outcome, flipped):
    assert combine_orders(in_order, swapped) == (outcome, flipped)


def test_rates_by_hand():
    # 10 prompts: 5 wins, 2 losses, 2 ties (one of them a flip), 1 invalid.
    verdicts = [("A", "B")] * 5 + [("B", "A")] * 2 + [("tie", "tie"), ("A", "A"), ("A", None)]
    outcomes, flips = zip(*(combine_orders(a, b) for a, b in verdicts))
    result = summarize(outcomes, flips, seed=3, resamples=500)
    assert (result.comparisons, result.invalid, result.wins, result.losses, result.ties, result.flips) == (10, 1, 5, 2, 2, 1)
    assert result.win_rate == pytest.approx(5 / 7)
    assert result.tie_rate == pytest.approx(2 / 9) and result.flip_rate == pytest.approx(1 / 9)
    low, high = result.win_rate_ci
    assert 0.0 <= low < 5 / 7 < high <= 1.0
    # Seeded: the same interval again.
    assert summarize(outcomes, flips, seed=3, resamples=500).win_rate_ci == result.win_rate_ci


def test_the_bootstrap_interval_narrows_with_more_comparisons():
    few = summarize([FIRST] * 6 + [SECOND] * 4, [False] * 10, resamples=1000)
    many = summarize([FIRST] * 600 + [SECOND] * 400, [False] * 1000, resamples=1000)
    assert few.win_rate == many.win_rate == pytest.approx(0.6)
    assert (many.win_rate_ci[1] - many.win_rate_ci[0]) < (few.win_rate_ci[1] - few.win_rate_ci[0]) / 5
    assert many.win_rate_ci[0] < 0.6 < many.win_rate_ci[1]


def test_length_controlled_win_rate_removes_a_preference_for_longer_answers():
    rng = np.random.default_rng(0)
    diffs = rng.normal(0, 100, 4000)
    # A judge that only likes length: the first model wins exactly when its answer is longer.
    scores = (diffs > 0).astype(float)
    raw = scores.mean()
    controlled = length_controlled_win_rate(scores, diffs)
    assert abs(raw - 0.5) < 0.03 and abs(controlled - 0.5) < 0.05
    # A first model that is longer on average wins raw comparisons; at equal lengths it is even.
    longer = diffs + 80
    scores = (longer > 0).astype(float)
    assert scores.mean() > 0.75 and abs(length_controlled_win_rate(scores, longer) - 0.5) < 0.12
    # A model better regardless of length keeps its advantage.
    better = (rng.random(4000) < 0.8).astype(float)
    assert length_controlled_win_rate(better, diffs) == pytest.approx(0.8, abs=0.03)
