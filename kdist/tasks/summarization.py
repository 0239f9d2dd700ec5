"""summarization: a document and, where labelled, a reference summary. ROUGE-1/2/L.

Fields: document; summary (optional).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from kdist.tasks import metrics
from kdist.tasks.base import Prompt, Task, TaskField, TaskSettings


class SummarizationSettings(TaskSettings):
    kind: Literal["summarization"] = "summarization"

    FIELDS: ClassVar = (TaskField("document"), TaskField("summary", required=False))


_LEAD_IN = re.compile(r"^\s*(?:here(?:'s| is) (?:a |the )?(?:brief |short )?summary[^:\n]*:|summary\s*:)\s*", re.IGNORECASE)


def strip_lead_in(text: str | None) -> str | None:
    """A model's text without a 'Here is a summary:' lead-in; None when nothing is left."""
    if not text:
        return None
    return _LEAD_IN.sub("", text).strip() or None


def mean_rouge(answers: Sequence[str | None], references: Sequence[str]) -> dict[str, float]:
    totals = dict.fromkeys(metrics.ROUGE_TYPES, 0.0)
    for answer, reference in zip(answers, references):
        for name, value in metrics.rouge(answer, reference).items():
            totals[name] += value
    n = max(len(answers), 1)
    return {name: round(total / n, 4) for name, total in totals.items()}


class SummarizationTask(Task):
    name = "summarization"
    Settings = SummarizationSettings
    headline = "rougeL"

    def prompt(self, record: dict[str, Any], system_prompt: str | None = None) -> Prompt:
        document, summary = self.value(record, "document"), self.value(record, "summary")
        return Prompt(self.chat(self.render(document=document), system_prompt), summary)

    def parse(self, text: str | None, meta: dict[str, Any]) -> str | None:
        return strip_lead_in(text)

    def score(self, answer: str | None, reference: str | None, meta: dict[str, Any]) -> float:
        if reference is None:
            raise ValueError("a row without a reference cannot be scored")
        return metrics.rouge(answer, reference)["rougeL"]

    def metrics(self, answers: Sequence[str | None], references: Sequence[str], metas: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {**mean_rouge(answers, references), "parsed": round(sum(a is not None for a in answers) / max(len(answers), 1), 4)}
