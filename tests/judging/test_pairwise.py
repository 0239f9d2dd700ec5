"""Pairwise arithmetic against values computed by hand."""

import numpy as np
import pytest

from kdist.judging.pairwise import FIRST, SECOND, TIE, _win_rate_of, combine_orders, length_controlled_win_rate, summarize


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


def test_the_length_controlled_rate_uses_the_valid_comparisons_with_ties_as_halves():
    """summarize fits on the valid comparisons only, each with its own length difference, a
    tie scoring 0.5: the same number as the regression called on those by hand."""
    outcomes = [FIRST, None, SECOND, TIE, FIRST, FIRST, TIE, SECOND]
    lengths = [30.0, 999.0, -10.0, 5.0, 40.0, -20.0, 0.0, 10.0]
    result = summarize(outcomes, [False] * 8, lengths, resamples=200)
    by_hand = length_controlled_win_rate(np.array([1.0, 0.0, 0.5, 1.0, 1.0, 0.5, 0.0]),
                                         np.array([30.0, -10.0, 5.0, 40.0, -20.0, 0.0, 10.0]))
    assert result.length_controlled_win_rate == pytest.approx(by_hand, rel=1e-9)
    # ties moved to a loss would give another number: the 0.5 is what is fitted
    as_losses = length_controlled_win_rate(np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]),
                                           np.array([30.0, -10.0, 5.0, 40.0, -20.0, 0.0, 10.0]))
    assert abs(by_hand - as_losses) > 0.05
    assert summarize(outcomes, [False] * 8, resamples=200).length_controlled_win_rate is None


def test_rates_without_decided_or_valid_comparisons_are_none_not_a_guess():
    even = summarize([FIRST, SECOND, FIRST, SECOND], [False] * 4, resamples=200)
    assert even.win_rate == 0.5 and even.win_rate_ci is not None
    ties = summarize([TIE, TIE, TIE], [True, False, False], resamples=200)
    assert ties.win_rate is None and ties.win_rate_ci is None
    assert ties.tie_rate == 1.0 and ties.flip_rate == pytest.approx(1 / 3)
    nothing = summarize([None, None], [False, False])
    assert (nothing.win_rate, nothing.tie_rate, nothing.flip_rate, nothing.win_rate_ci) == (None,) * 4
    assert nothing.invalid == 2


def test_the_bootstrap_leaves_ties_out_and_rates_a_tied_resample_as_even():
    """One win among ten comparisons, nine ties: a resample either holds the win (its win rate
    1.0: ties are not decided comparisons) or holds only ties (0.5, even); about a third hold
    no win, so the 95% interval is exactly (0.5, 1.0)."""
    assert summarize([FIRST] + [TIE] * 9, [False] * 10, resamples=2000).win_rate_ci == (0.5, 1.0)
    # 30 wins, 10 losses, 60 ties: the interval is around 0.75, not around 30/100
    low, high = summarize([FIRST] * 30 + [SECOND] * 10 + [TIE] * 60, [False] * 100).win_rate_ci
    assert 0.55 < low < 0.75 < high < 0.9


def test_the_resampled_statistic_per_resample():
    """The statistic the bootstrap computes on each resample (one row each): one decided
    comparison is a win rate of 1 or 0, only ties are even."""
    resamples = np.array([[1.0, 0.5, 0.5], [0.0, 0.5, 0.5], [0.5, 0.5, 0.5], [1.0, 0.0, 1.0]])
    np.testing.assert_allclose(_win_rate_of(resamples), [1.0, 0.0, 0.5, 2 / 3])


def test_the_bootstrap_is_seeded_and_follows_the_confidence_level():
    outcomes = [FIRST] * 130 + [SECOND] * 70
    first = summarize(outcomes, [False] * 200, seed=1).win_rate_ci
    assert summarize(outcomes, [False] * 200, seed=1).win_rate_ci == first
    assert summarize(outcomes, [False] * 200, seed=2).win_rate_ci != first
    low50, high50 = summarize(outcomes, [False] * 200, seed=1, confidence=0.5).win_rate_ci
    assert first[0] < low50 < 0.65 < high50 < first[1]


def test_a_perfect_record_stays_finite_through_the_ridge():
    """All wins at equal lengths: the fit's intercept t solves sigmoid(t) - 1 + 2e-3 t = 0 (the
    ridge 1e-3 * t^2), t = 4.6651, P = 0.99067, not 1."""
    from scipy.optimize import brentq

    t = brentq(lambda t: 1 / (1 + np.exp(-t)) - 1 + 2e-3 * t, 0, 50)
    assert length_controlled_win_rate(np.ones(10), np.zeros(10)) == pytest.approx(1 / (1 + np.exp(-t)), abs=1e-5)
    # two comparisons are enough for a fit; one is not
    assert length_controlled_win_rate(np.array([1.0, 0.0]), np.array([5.0, -5.0])) == pytest.approx(0.5, abs=1e-4)
    assert length_controlled_win_rate(np.array([1.0]), np.array([5.0])) is None
