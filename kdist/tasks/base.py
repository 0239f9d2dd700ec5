"""What every task is: a source row -> chat messages, an answer parsed back, a score, metrics.

A task is one module of this package with its prompt template beside it
(`templates/<name>.jinja`, Jinja2). Its settings are a config section of its own (`data.task` in the run config): the
column mapping (which source column holds each of the task's fields, so a new dataset needs no
code), a template that replaces the packaged one, and the task's own options.

Answers travel between stages as text: `parse` turns a model's text into the task's canonical
answer text (or None when it gives none), `score` compares that with the prompt's reference
(also canonical text, written by `prompt`). A None answer scores 0; a None reference cannot be
scored at all (ValueError): "no answer" never equals "no label".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jinja2
from pydantic import Field, field_validator

from kdist.endpoints import Section


class RowError(ValueError):
    """A source row the task cannot use. The text names the field and what is allowed; the
    caller adds where the row is (file and line), so the user gets one line to act on."""


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    reference: str | None  # canonical answer text, when the row is labelled
    meta: dict[str, Any] = field(default_factory=dict)  # what parse/score need besides the text
    label: str | None = None  # the class to stratify splits by (None: no classes)


@dataclass(frozen=True)
class TaskField:
    name: str
    required: bool = True
    # Text fields must hold non-empty text: an empty question would be sent and paid for.
    text: bool = True


class TaskSettings(Section):
    """Settings every task has; each task adds its own (and its `kind`)."""

    kind: str
    # Task field -> source column, for the fields whose column is named differently.
    columns: dict[str, str] = Field(default_factory=dict)
    # Jinja2 text of the user message, replacing the task's packaged template.
    template: str | None = None

    FIELDS: ClassVar[tuple[TaskField, ...]] = ()

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        known = [f.name for f in cls.FIELDS]
        for name in columns:
            if name not in known:
                raise ValueError(f"'{name}' is not a field of this task; fields: {', '.join(known)}")
        return columns

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                _ENV.from_string(text)
            except jinja2.TemplateSyntaxError as err:
                raise ValueError(f"not a valid Jinja2 template (line {err.lineno}: {err.message})") from None
        return text


TEMPLATES = Path(__file__).with_name("templates")
# StrictUndefined: a template naming a field the task does not pass fails, instead of
# rendering an empty string into every prompt.
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True,
                          lstrip_blocks=True, keep_trailing_newline=False)  # fmt: skip


class Task:
    """Base of the tasks: subclasses set `name`, `Settings`, and implement `prompt`, `parse`."""

    name: ClassVar[str]
    Settings: ClassVar[type[TaskSettings]]
    # Training may check accuracy from one next-token prediction (kdist.train.accuracy) only
    # when every answer is one of a few one-token labels (the letters of multiple choice).
    fast_validation: ClassVar[bool] = False
    # The metric a report leads with (a key of `metrics`).
    headline: ClassVar[str] = "accuracy"

    def __init__(self, settings: TaskSettings | None = None) -> None:
        self.settings = settings or self.Settings(kind=self.name)
        source = self.settings.template or (TEMPLATES / f"{self.name}.jinja").read_text()
        self._template = _ENV.from_string(source)

    # --- source row -> prompt ----------------------------------------------------------------

    def prompt(self, record: dict[str, Any], system_prompt: str | None = None) -> Prompt:
        raise NotImplementedError

    def column(self, name: str) -> str:
        return self.settings.columns.get(name, name)

    def value(self, record: dict[str, Any], name: str) -> Any:
        """The row's value for task field `name`, checked: missing and empty are RowErrors;
        an optional field that is absent or empty is None."""
        spec = next(f for f in self.Settings.FIELDS if f.name == name)
        column = self.column(name)
        value = record.get(column)
        if value is None or (spec.text and isinstance(value, str) and not value.strip()):
            if not spec.required:
                return None
            if column not in record:
                shown = ", ".join(key for key in record if not key.startswith("__"))
                raise RowError(f"missing column '{column}' (task field '{name}'; the row has: {shown})")
            raise RowError(f"column '{column}' is empty (task field '{name}' needs text)")
        if spec.text and not isinstance(value, str):
            value = str(value)
        return value

    def render(self, **values: Any) -> str:
        try:
            return self._template.render(**values).strip()
        except jinja2.UndefinedError as err:
            raise RowError(f"data.task.template: {err.message} (it may use: {', '.join(sorted(values))})") from None

    @staticmethod
    def chat(user: str, system_prompt: str | None) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return [*turns, {"role": "user", "content": user}]

    # --- answer -> score -> metrics ----------------------------------------------------------

    def parse(self, text: str | None, meta: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def parse_stored(self, text: str | None, meta_json: str | None) -> str | None:
        """`parse` for a stored prompt row, whose meta is JSON text (kdist.rows.PROMPT_SCHEMA)."""
        return self.parse(text, json.loads(meta_json) if meta_json else {})

    def score(self, answer: str | None, reference: str | None, meta: dict[str, Any]) -> float:
        """In [0, 1]; 1 is right. A row without a reference cannot be scored."""
        if reference is None:
            raise ValueError("a row without a reference cannot be scored")
        return float(answer is not None and answer == reference)

    def metrics(self, answers: Sequence[str | None], references: Sequence[str], metas: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Metrics over labelled rows (the caller leaves out rows without a reference)."""
        scores = [self.score(a, r, m) for a, r, m in zip(answers, references, metas)]
        return {"accuracy": _mean(scores), "parsed": _mean([a is not None for a in answers])}

    def labels(self, meta: dict[str, Any]) -> str | None:
        """With fast_validation: the one-token labels an answer is one of (e.g. 'ABCDE')."""
        return None

    def chance(self, metas: Sequence[dict[str, Any]]) -> dict[str, float]:
        """What guessing uniformly among the allowed answers scores, per metric (where it exists)."""
        return {}


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0
