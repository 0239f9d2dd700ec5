"""grading: a judge as a task. A question, an optional context and an answer -> a score in
[0, 1] and a short rationale; used to distil a judge. Metrics: agreement with the reference
scores at a threshold (0.8 by default), Pearson and Spearman correlation, mean absolute error
(kdist.judging.agreement: the same function the judges report).

Fields: question; context (optional); answer; score (optional reference in [0, 1]).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from kdist.judging.agreement import judge_agreement
from kdist.tasks.base import Prompt, RowError, Task, TaskField, TaskSettings


class GradingSettings(TaskSettings):
    kind: Literal["grading"] = "grading"
    # Agreement counts a prediction and a reference as agreeing when both are at or above it,
    # or both below.
    threshold: float = Field(default=0.8, ge=0.0, le=1.0)

    FIELDS: ClassVar = (TaskField("question"), TaskField("context", required=False), TaskField("answer"),
                        TaskField("score", required=False, text=False))  # fmt: skip


_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_SCORE = re.compile(r"\bscore\b\s*(?:is|of)?\s*[:=]?\s*\**\s*(\d*\.?\d+)", re.IGNORECASE)


def canonical_score(value: Any) -> str | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return f"{number:.4g}" if 0.0 <= number <= 1.0 else None


def parse_score(text: str | None) -> str | None:
    """The score of a grader's answer: a JSON object's "score", else "Score: 0.7"."""
    if not text:
        return None
    for found in _OBJECT.finditer(text):
        try:
            data = json.loads(found.group(0))
        except ValueError:
            continue
        if isinstance(data, dict) and "score" in data:
            return canonical_score(data["score"])
    match = _SCORE.search(text)
    return canonical_score(match.group(1)) if match else None


class GradingTask(Task):
    name = "grading"
    Settings = GradingSettings
    headline = "agreement"

    def prompt(self, record: dict[str, Any], system_prompt: str | None = None) -> Prompt:
        question, context, answer = (self.value(record, name) for name in ("question", "context", "answer"))
        raw = self.value(record, "score")
        reference = None
        if raw is not None and raw != "":
            reference = canonical_score(raw)
            if reference is None:
                raise RowError(f"column '{self.column('score')}': score {raw!r} is not a number in [0, 1]")
        user = self.render(question=question, context=context, answer=answer)
        label = None if reference is None else str(float(reference) >= self.settings.threshold)
        return Prompt(self.chat(user, system_prompt), reference, label=label)

    def parse(self, text: str | None, meta: dict[str, Any]) -> str | None:
        return parse_score(text)

    def score(self, answer: str | None, reference: str | None, meta: dict[str, Any]) -> float:
        if reference is None:
            raise ValueError("a row without a reference cannot be scored")
        return 0.0 if answer is None else 1.0 - abs(float(answer) - float(reference))

    def metrics(self, answers: Sequence[str | None], references: Sequence[str], metas: Sequence[dict[str, Any]]) -> dict[str, float]:
        predicted = [None if a is None else float(a) for a in answers]
        gold = [float(r) for r in references]
        n = max(len(gold), 1)
        errors = [abs(p - g) for p, g in zip(predicted, gold) if p is not None]
        agreement = judge_agreement(predicted, gold, self.settings.threshold)
        return {
            "agreement": _rounded(agreement["accuracy"]) or 0.0,
            "pearson": _rounded(agreement["pearson"]),
            "spearman": _rounded(agreement["spearman"]),
            "mae": round(sum(errors) / len(errors), 4) if errors else None,
            "parsed": round(len(errors) / n, 4),
        }


def _rounded(value: float | int | None) -> float | None:
    return None if value is None else round(float(value), 4)
