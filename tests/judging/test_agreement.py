"""Agreement of two judges, against values computed by hand and scipy's definitions."""

import pytest

from kdist.judging.agreement import judge_agreement


def test_agreement_at_the_threshold_and_correlations():
    teacher = [0.9, 0.2, 0.8, 0.5, 1.0]
    student = [0.85, 0.4, 0.6, None, 0.95]
    result = judge_agreement(student, teacher)
    # Classes at 0.8: teacher T F T F T, student T F F - T -> agree on 3 of 5 (the unparsable
    # one counts as a disagreement).
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["pairs"] == 5 and result["unparsable"] == 1
    # Pearson over the 4 readable pairs, by hand.
    xs, ys = [0.85, 0.4, 0.6, 0.95], [0.9, 0.2, 0.8, 1.0]
    mx, my = sum(xs) / 4, sum(ys) / 4
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    var = (sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys)) ** 0.5
    assert result["pearson"] == pytest.approx(cov / var)
    assert result["spearman"] == pytest.approx(1.0)  # same order: 0.4<0.6<0.85<0.95 and 0.2<0.8<0.9<1.0


def test_a_constant_judge_has_no_correlation():
    result = judge_agreement([1.0, 1.0, 1.0], [0.9, 0.1, 0.95])
    assert result["pearson"] is None and result["spearman"] is None
    assert result["accuracy"] == pytest.approx(2 / 3)


def test_scores_of_unequal_length_are_refused_saying_both_lengths():
    with pytest.raises(ValueError, match="^3 predicted scores for 2 reference scores$"):
        judge_agreement([0.5, 1.0, 0.0], [1.0, 0.0])


def test_the_threshold_is_inclusive_on_both_sides_and_two_pairs_correlate():
    # 0.8 is acceptable for the student's score as for the teacher's
    assert judge_agreement([0.8, 0.79], [0.9, 0.1])["accuracy"] == 1.0
    assert judge_agreement([0.9, 0.1], [0.8, 0.79])["accuracy"] == 1.0
    two = judge_agreement([0.2, 0.9], [0.1, 0.7])
    assert two["pearson"] == pytest.approx(1.0) and two["spearman"] == pytest.approx(1.0)
    one = judge_agreement([0.2, None], [0.1, 0.7])
    assert one["pearson"] is None and one["accuracy"] == 0.5


def test_a_constant_reference_or_no_pairs_give_none_not_nan():
    constant_teacher = judge_agreement([0.9, 0.1, 0.5], [1.0, 1.0, 1.0])
    assert constant_teacher["pearson"] is None and constant_teacher["spearman"] is None
    empty = judge_agreement([], [])
    assert (empty["pairs"], empty["accuracy"], empty["pearson"]) == (0, None, None)
