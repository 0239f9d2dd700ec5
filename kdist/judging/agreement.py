"""How well one judge agrees with another (a distilled student judge with its teacher judge):
the accuracy of the acceptable / unacceptable class at a threshold, and the Pearson and
Spearman correlations of the scores (all normalised to [0, 1]).

One implementation, used by the grading task's metrics and by judge distillation reports.
"""

from __future__ import annotations

from collections.abc import Sequence

ACCEPTABLE = 0.8  # the judge-distillation recipe's "acceptable": a score at or above 0.8


def judge_agreement(predicted: Sequence[float | None], reference: Sequence[float], threshold: float = ACCEPTABLE) -> dict[str, float | int | None]:
    """Agreement over the pairs where `predicted` was readable; `unparsable` counts the rest
    (they count as disagreements in `accuracy`, never as guesses)."""
    from scipy.stats import pearsonr, spearmanr

    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted scores for {len(reference)} reference scores")
    pairs = [(p, r) for p, r in zip(predicted, reference) if p is not None]
    agree = sum((p >= threshold) == (r >= threshold) for p, r in pairs)
    result: dict[str, float | int | None] = {
        "pairs": len(reference),
        "unparsable": len(reference) - len(pairs),
        "accuracy": agree / len(reference) if reference else None,
        "pearson": None,
        "spearman": None,
    }
    if len(pairs) >= 2:
        xs, ys = [p for p, _ in pairs], [r for _, r in pairs]
        if len(set(xs)) > 1 and len(set(ys)) > 1:  # a constant series has no correlation
            result["pearson"] = float(pearsonr(xs, ys).statistic)
            result["spearman"] = float(spearmanr(xs, ys).statistic)
    return result
