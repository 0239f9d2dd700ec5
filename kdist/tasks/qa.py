"""qa: a question, optionally with a context passage (extractive or abstractive reading
comprehension, and the RAG form: a question plus a retrieved chunk). Metrics: exact match and
token F1 against every reference answer (SQuAD's normalisation).

Fields: question; context (optional); answer (optional: a string, a list of strings, or
SQuAD's {"text": [...], "answer_start": [...]}).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from kdist.tasks import metrics
from kdist.tasks.base import Prompt, RowError, Task, TaskField, TaskSettings


class QASettings(TaskSettings):
    kind: Literal["qa"] = "qa"

    FIELDS: ClassVar = (TaskField("question"), TaskField("context", required=False),
                        TaskField("answer", required=False, text=False))  # fmt: skip


# "Answer: Paris", "The answer is Paris.", "Final answer - Paris": the part after the cue.
_CUE = re.compile(r"^(?:.*?\b(?:final\s+)?answer(?:\s+is)?\s*[:\-]\s*|(?:the\s+)?answer\s+is\s+)", re.IGNORECASE | re.DOTALL)


class QATask(Task):
    name = "qa"
    Settings = QASettings
    headline = "f1"

    def prompt(self, record: dict[str, Any], system_prompt: str | None = None) -> Prompt:
        question, context = self.value(record, "question"), self.value(record, "context")
        answers = self._answers(self.value(record, "answer"))
        user = self.render(question=question, context=context)
        # The passage is kept in meta too: the judge's RAG rubrics show it (kdist.judging).
        meta = {**({"answers": answers} if answers else {}), **({"context": context} if context else {})}
        return Prompt(self.chat(user, system_prompt), answers[0] if answers else None, meta)

    def _answers(self, raw: Any) -> list[str]:
        if isinstance(raw, dict):
            raw = raw.get("text")
        if raw is None or raw == "":
            return []
        values = raw if isinstance(raw, list) else [raw]
        answers = [str(v).strip() for v in values if v is not None and str(v).strip()]
        if values and not answers:
            raise RowError(f"column '{self.column('answer')}' holds no non-empty answer")
        return answers

    def parse(self, text: str | None, meta: dict[str, Any]) -> str | None:
        if not text or not text.strip():
            return None
        answer = _CUE.sub("", text.strip(), count=1).strip()
        answer = answer.splitlines()[0].strip().strip("*").strip() if answer else ""
        return answer.rstrip(".").strip() or None

    def score(self, answer: str | None, reference: str | None, meta: dict[str, Any]) -> float:
        if reference is None:
            raise ValueError("a row without a reference cannot be scored")
        return metrics.token_f1(answer, meta.get("answers") or [reference])

    def metrics(self, answers: Sequence[str | None], references: Sequence[str], metas: Sequence[dict[str, Any]]) -> dict[str, float]:
        refs = [m.get("answers") or [r] for r, m in zip(references, metas)]
        n = max(len(answers), 1)
        return {
            "exact_match": round(sum(metrics.exact_match(a, r) for a, r in zip(answers, refs)) / n, 4),
            "f1": round(sum(metrics.token_f1(a, r) for a, r in zip(answers, refs)) / n, 4),
            "parsed": round(sum(a is not None for a in answers) / n, 4),
        }

