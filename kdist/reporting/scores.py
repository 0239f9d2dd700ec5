"""Figures derived from the evaluation's per-row results.

- the recovered share of the teacher's gain, per metric: (student - base) / (teacher - base).
  A teacher no better than the base leaves no gain to recover: the share is None with a note
  (never a division by zero, never a share of a loss). For a lower-is-better metric (MAE) the
  gain is a decrease, and the same ratio holds.
- the judge's accuracy: among the compared pairs where the labels decide (exactly one of the
  two answers is right), how often the judge's combined verdict picks the right one (a tie or a
  flip picks neither, so it counts as a miss); a pair the judge could not decide (no readable
  verdict) is left out.
- the worst rows: where the student falls furthest below the teacher (or the reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Metrics of the task library where less is better (kdist.tasks.grading's mean absolute error).
LOWER_IS_BETTER = frozenset({"mae"})
# Below this a teacher's gain over the base is no gain (metrics are rounded to 4 places).
NO_GAIN = 1e-9


def recovered_share(
    metrics: dict[str, dict[str, float | None]], base: str = "base", student: str = "student", teacher: str = "teacher"
) -> tuple[dict[str, float | None], dict[str, str]]:
    """({metric: share or None}, {metric: why it is None}) from each model's task metrics."""
    missing = [name for name in (base, student, teacher) if name not in metrics]
    if missing:
        return {}, {"*": f"no recovered share: no {', '.join(missing)} among the evaluated models"}
    shares: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for name in metrics[student]:
        b, s, t = (metrics[model].get(name) for model in (base, student, teacher))
        if b is None or s is None or t is None:
            shares[name], notes[name] = None, "a model has no value for this metric"
            continue
        gain = (b - t) if name in LOWER_IS_BETTER else (t - b)
        if gain <= NO_GAIN:
            shares[name] = None
            notes[name] = f"the teacher ({t:.4g}) is no better than the base ({b:.4g}): there is no gain to recover"
            continue
        shares[name] = round((s - b) / (t - b), 4)
    return shares, notes


def judge_accuracy(outcomes: Sequence[str | None], first_right: Sequence[bool], second_right: Sequence[bool]) -> float | None:
    """How often the verdict ("first", "second", "tie" or None) picks the one right answer."""
    decided = [(outcome, first) for outcome, first, second in zip(outcomes, first_right, second_right)
               if first != second and outcome is not None]  # fmt: skip
    if not decided:
        return None
    picked = sum(outcome == ("first" if first else "second") for outcome, first in decided)
    return round(picked / len(decided), 4)


def worst_rows(results: list[dict[str, Any]], limit: int, student: str = "student", teacher: str = "teacher") -> list[str]:
    """Ids of the rows where `student` scores furthest below `teacher` (below a perfect score
    when there is no teacher), worst first; ties broken by id for a stable report."""
    scores: dict[str, dict[str, float]] = {}
    for row in results:
        scores.setdefault(row["id"], {})[row["model"]] = row["score"]
    gaps = [
        ((by_model.get(teacher, 1.0) or 0.0) - (by_model[student] or 0.0), row_id)
        for row_id, by_model in scores.items()
        if student in by_model
    ]
    gaps = [gap for gap in gaps if gap[0] > 0]
    return [row_id for _, row_id in sorted(gaps, key=lambda gap: (-gap[0], gap[1]))[:limit]]
