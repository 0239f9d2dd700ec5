"""extraction: a fixed list of questions about a text, answered as named fields of one JSON
object, parsed with a schema (pydantic). Metrics: per-field accuracy and the rate of answers
with every scored field right.

The default fields are the support-ticket triage of the customer-support recipe: a sentiment
score 1-5, the topic, a one-line summary and the urgency. Free-text fields (the summary) are
checked for presence only: they are not scored.

Fields: text; answer (optional: the reference as a JSON object, or its JSON text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from kdist.endpoints import Section
from kdist.tasks.base import Prompt, RowError, Task, TaskField, TaskSettings
from kdist.tasks.metrics import normalise


class ExtractionField(Section):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    question: str
    type: Literal["text", "integer", "number", "choice"] = "text"
    choices: list[str] | None = None  # for type choice
    minimum: float | None = None  # for integer and number
    maximum: float | None = None
    # Compared with the reference (normalised text, or the number); free text is not.
    scored: bool = True

    @model_validator(mode="after")
    def _choices_for_choice(self) -> ExtractionField:
        if (self.type == "choice") != bool(self.choices):
            raise ValueError("choices are needed by type choice, and only by it")
        return self


def _triage_fields() -> list[ExtractionField]:
    return [
        ExtractionField(name="sentiment", question="How positive is the customer, from 1 (angry) to 5 (delighted)?",
                        type="integer", minimum=1, maximum=5),
        ExtractionField(name="topic", question="What is the ticket about (billing, shipping, technical, account or other)?",
                        type="choice", choices=["billing", "shipping", "technical", "account", "other"]),
        ExtractionField(name="summary", question="Summarise the ticket in one sentence.", scored=False),
        ExtractionField(name="urgency", question="How urgent is it (low, medium or high)?",
                        type="choice", choices=["low", "medium", "high"]),
    ]  # fmt: skip


class ExtractionSettings(TaskSettings):
    kind: Literal["extraction"] = "extraction"
    fields: list[ExtractionField] = Field(default_factory=_triage_fields, min_length=1)

    FIELDS: ClassVar = (TaskField("text"), TaskField("answer", required=False, text=False))


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class ExtractionTask(Task):
    name = "extraction"
    Settings = ExtractionSettings

    def __init__(self, settings: TaskSettings | None = None) -> None:
        super().__init__(settings)
        self._schema = _schema(self.settings.fields)

    def prompt(self, record: dict[str, Any], system_prompt: str | None = None) -> Prompt:
        text = self.value(record, "text")
        raw = self.value(record, "answer")
        reference = None
        if raw is not None and raw != "":
            try:
                reference = self._canonical(raw if isinstance(raw, dict) else json.loads(str(raw)))
            except (ValueError, ValidationError) as err:
                raise RowError(f"column '{self.column('answer')}': not an answer of the fields "
                               f"({_first_problem(err)})") from None  # fmt: skip
        user = self.render(text=text, fields=self.settings.fields)
        return Prompt(self.chat(user, system_prompt), reference)

    def parse(self, text: str | None, meta: dict[str, Any]) -> str | None:
        """The first JSON object in the text (inside ```json fences or chatty prose),
        validated against the fields; None when there is none or it does not fit."""
        if not text:
            return None
        found = _OBJECT.search(text)
        if not found:
            return None
        try:
            return self._canonical(json.loads(found.group(0)))
        except (ValueError, ValidationError):
            return None

    def _canonical(self, data: Any) -> str:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        lowered = {key: value.strip().lower() if isinstance(value, str) and self._is_choice(key) else value
                   for key, value in data.items()}  # fmt: skip
        return json.dumps(self._schema.model_validate(lowered).model_dump(), sort_keys=False)

    def _is_choice(self, name: str) -> bool:
        return any(f.name == name and f.type == "choice" for f in self.settings.fields)

    def field_scores(self, answer: str | None, reference: str) -> dict[str, float]:
        got = json.loads(answer) if answer else {}
        want = json.loads(reference)
        return {f.name: float(f.name in got and _same(got[f.name], want[f.name]))
                for f in self.settings.fields if f.scored}  # fmt: skip

    def score(self, answer: str | None, reference: str | None, meta: dict[str, Any]) -> float:
        if reference is None:
            raise ValueError("a row without a reference cannot be scored")
        scores = self.field_scores(answer, reference)
        return sum(scores.values()) / len(scores) if scores else float(answer is not None)

    def metrics(self, answers: Sequence[str | None], references: Sequence[str], metas: Sequence[dict[str, Any]]) -> dict[str, float]:
        per_row = [self.field_scores(a, r) for a, r in zip(answers, references)]
        n = max(len(per_row), 1)
        result = {f"field_accuracy.{name}": round(sum(row[name] for row in per_row) / n, 4)
                  for name in (per_row[0] if per_row else {})}  # fmt: skip
        result["fully_correct"] = round(sum(all(row.values()) for row in per_row) / n, 4)
        result["parsed"] = round(sum(a is not None for a in answers) / n, 4)
        return result

    headline = "fully_correct"


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, int | float) and isinstance(got, int | float):
        return abs(float(got) - float(want)) < 1e-9
    return normalise(str(got)) == normalise(str(want))


def _schema(fields: list[ExtractionField]) -> type[BaseModel]:
    """A pydantic model of the answer object: every field required, typed, bounded."""
    definitions: dict[str, Any] = {}
    for f in fields:
        if f.type == "choice":
            annotation: Any = Literal[tuple(f.choices)]  # type: ignore[misc]
        else:
            annotation = {"text": str, "integer": int, "number": float}[f.type]
        bounds = {k: v for k, v in (("ge", f.minimum), ("le", f.maximum)) if v is not None}
        definitions[f.name] = (annotation, Field(**bounds))
    return create_model("ExtractionAnswer", **definitions)


def _first_problem(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'answer'}: {first['msg']}"
    return str(err).splitlines()[0]
