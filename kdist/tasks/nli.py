"""nli: a premise and a hypothesis, labelled entailment / neutral / contradiction (or the
labels the config lists).

Fields: premise; hypothesis; label (optional: a label's text, any case, or its 0-based index
in `labels`, as MNLI and SNLI store it). A label outside the set is a row error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from kdist.tasks.base import Prompt, RowError, Task, TaskField, TaskSettings


class NLISettings(TaskSettings):
    kind: Literal["nli"] = "nli"
    labels: list[str] = Field(default_factory=lambda: ["entailment", "neutral", "contradiction"], min_length=2)

    FIELDS: ClassVar = (TaskField("premise"), TaskField("hypothesis"), TaskField("label", required=False, text=False))

    @field_validator("labels")
    @classmethod
    def _distinct_words(cls, labels: list[str]) -> list[str]:
        lowered = [label.strip().lower() for label in labels]
        if len(set(lowered)) != len(lowered) or not all(lowered):
            raise ValueError("labels must be distinct, non-empty words")
        return lowered


_WORD = re.compile(r"[a-z]+")
_NEGATION = re.compile(r"\b(?:not|no|isn't|is not|doesn't|does not|neither)\s+(?:an?\s+)?$")
_VERDICT = re.compile(r"\b(?:answer|label|relation(?:ship)?|verdict|classification)\b(?:\s+is)?\s*[:\-]?\s*\W*([a-z]+)")


class NLITask(Task):
    name = "nli"
    Settings = NLISettings

    def prompt(self, record: dict[str, Any], system_prompt: str | None = None) -> Prompt:
        premise, hypothesis = self.value(record, "premise"), self.value(record, "hypothesis")
        raw = self.value(record, "label")
        label = None if raw is None or raw == "" else self._label(raw)
        user = self.render(premise=premise, hypothesis=hypothesis, labels=self.settings.labels)
        return Prompt(self.chat(user, system_prompt), label, {}, label=label)

    def _label(self, raw: Any) -> str:
        labels = self.settings.labels
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(labels):
            return labels[raw]
        if isinstance(raw, str) and raw.strip().lower() in labels:
            return raw.strip().lower()
        raise RowError(
            f"column '{self.column('label')}': label {raw!r} is not one of {', '.join(labels)} "
            f"(or a 0-based index; data.task.labels)"
        )

    def chance(self, metas: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"accuracy": round(1 / len(self.settings.labels), 4)}

    def parse(self, text: str | None, meta: dict[str, Any]) -> str | None:
        """The label a model's text gives: its first word ("Entailment."), a stated verdict
        ("the answer is: contradiction"), or the one label the text names without a negation
        ("..., so it is neutral" but not "not entailment")."""
        if not text:
            return None
        lowered = text.lower()
        first = _WORD.search(lowered)
        if first and self._as_label(first.group(0)):
            return self._as_label(first.group(0))
        for match in _VERDICT.finditer(lowered):
            if self._as_label(match.group(1)):
                return self._as_label(match.group(1))
        named = {
            self._as_label(word.group(0)) for word in _WORD.finditer(lowered)
            if self._as_label(word.group(0)) and not _NEGATION.search(lowered[: word.start()])
        }  # fmt: skip
        return named.pop() if len(named) == 1 else None

    def _as_label(self, word: str) -> str | None:
        # "entails", "entailed" -> entailment; "contradicts" -> contradiction: a shared stem of
        # six letters (shorter labels, such as yes/no, must match whole).
        for label in self.settings.labels:
            stem = label[: min(len(label), 6)]
            if word == label or (len(label) > 6 and word.startswith(stem)):
                return label
        return None
