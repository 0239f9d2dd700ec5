"""math: word problems with a final numeric answer (GSM8K). Accuracy on the number.

Fields: question; answer (optional: a number, or GSM8K's worked solution ending in
"#### 42", whose final number is the reference).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Literal

from kdist.tasks.base import Prompt, RowError, Task, TaskField, TaskSettings


class MathSettings(TaskSettings):
    kind: Literal["math"] = "math"

    FIELDS: ClassVar = (TaskField("question"), TaskField("answer", required=False, text=False))


_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_HASHES = re.compile(rf"####\s*({_NUMBER})")
_BOXED = re.compile(rf"\\boxed\{{\s*({_NUMBER})\s*\}}")
_ANSWER_IS = re.compile(rf"answer(?:\s+is)?\s*[:\-=]?\s*(?:\*\*)?\s*({_NUMBER})", re.IGNORECASE)
_ANY = re.compile(_NUMBER)


def canonical_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5', '$7' -> '7', '-3.0' -> '-3'; None when it is no number."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(value.to_integral_value())
    return format(value.normalize(), "f")


def parse_number(text: str | None) -> str | None:
    """The final answer of a solution: after '####', in \\boxed{}, after 'the answer is', or
    else the last number written (how GSM8K-style evaluations read chatty solutions)."""
    if not text:
        return None
    for pattern in (_HASHES, _BOXED, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            return canonical_number(found[-1])
    numbers = _ANY.findall(text)
    return canonical_number(numbers[-1]) if numbers else None


class MathTask(Task):
    name = "math"
    Settings = MathSettings

    def prompt(self, record: dict[str, Any], system_prompt: str | None = None) -> Prompt:
        question = self.value(record, "question")
        raw = self.value(record, "answer")
        reference = None
        if raw is not None and str(raw).strip():
            reference = parse_number(str(raw))
            if reference is None:
                raise RowError(f"column '{self.column('answer')}': {str(raw)[:40]!r} holds no number")
        return Prompt(self.chat(self.render(question=question), system_prompt), reference)

    def parse(self, text: str | None, meta: dict[str, Any]) -> str | None:
        return parse_number(text)
