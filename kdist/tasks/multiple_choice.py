"""multiple_choice: a question with labelled choices (CommonsenseQA format), answered with one
letter. The only task whose answers are one-token labels, so training can check accuracy
from one next-token prediction (fast_validation).

Fields: question; choices (a list of strings, or CommonsenseQA's {"label": [...], "text":
[...]}); answer (optional: a letter, a 0-based index, or the text of a choice).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from kdist.tasks.base import Prompt, RowError, Task, TaskField, TaskSettings

LETTERS = "ABCDEFGHIJ"


class MultipleChoiceSettings(TaskSettings):
    kind: Literal["multiple_choice"] = "multiple_choice"

    FIELDS: ClassVar = (TaskField("question"), TaskField("choices", text=False), TaskField("answer", required=False, text=False))


@dataclass(frozen=True)
class MultipleChoice:
    """One question (what the synthetic source makes)."""

    question: str
    choices: list[str]
    answer: str | None = None  # a letter, when the data is labelled

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.choices)]

    def record(self) -> dict[str, Any]:
        return {"question": self.question, "choices": self.choices, "answer": self.answer}

    def user_message(self) -> str:
        return MultipleChoiceTask().prompt(self.record()).messages[-1]["content"]


# A leading letter counts only when it stands alone: "B", "(C) cat", "D) drum", "E.", "A:" --
# never the article of "A cat sat on the mat".
_LEADING_LETTER = re.compile(r"^[\s*_]*[(\[]?([A-J])[*_]*(?:\s*$|\s*[)\]]|[.:,](?!\w))")
# "The answer is B", "answer: (c)", "Correct answer: **D**". A lower-case letter counts only
# when it stands alone ("answer: a", "answer is (c)"): "the answer is a cat" names no letter.
_ANSWER_IS = re.compile(r"answer(?:\s+is)?\s*[:\-]?[\s*_(\[]*([A-Ja-j])(?![\w'])(.*)", re.IGNORECASE | re.DOTALL)
_ALONE = re.compile(r"\s*([)\]]|[*_.!]*\s*$)")


def parse_choice(text: str | None, letters: str = LETTERS[:5]) -> str | None:
    """The chosen letter from a model's answer, or None when it names no allowed letter."""
    if not text:
        return None
    leading = _LEADING_LETTER.match(text)
    if leading and leading.group(1) in letters:
        return leading.group(1)
    for match in _ANSWER_IS.finditer(text):
        letter, rest = match.group(1), match.group(2)
        if (letter.isupper() or _ALONE.match(rest)) and letter.upper() in letters:
            return letter.upper()
    return None


class MultipleChoiceTask(Task):
    name = "multiple_choice"
    Settings = MultipleChoiceSettings
    fast_validation = True

    def prompt(self, record: dict[str, Any], system_prompt: str | None = None) -> Prompt:
        question = self.value(record, "question")
        choices = _choices(self.value(record, "choices"), self.column("choices"))
        letters = LETTERS[: len(choices)]
        raw = self.value(record, "answer")
        answer = None if raw is None or raw == "" else _answer_letter(raw, choices, self.column("answer"))
        user = self.render(question=question, choices=choices, options=list(zip(letters, choices)))
        return Prompt(self.chat(user, system_prompt), answer, {"choices": choices}, label=answer)

    def parse(self, text: str | None, meta: dict[str, Any]) -> str | None:
        return parse_choice(text, self.labels(meta))

    def labels(self, meta: dict[str, Any]) -> str:
        return LETTERS[: len(meta.get("choices") or []) or 5]

    def chance(self, metas: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"accuracy": round(sum(1 / len(self.labels(m)) for m in metas) / len(metas), 4)} if metas else {}


def _choices(value: Any, column: str) -> list[str]:
    # Either a plain list of strings or CommonsenseQA's {"label": [...], "text": [...]}.
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if not isinstance(value, list) or not 2 <= len(value) <= len(LETTERS):
        raise RowError(f"column '{column}' must be a list of 2 to {len(LETTERS)} choices")
    if any(choice is None or not str(choice).strip() for choice in value):
        raise RowError(f"column '{column}' has an empty choice")
    return [str(choice) for choice in value]


def _answer_letter(value: Any, choices: list[str], column: str) -> str:
    letters = LETTERS[: len(choices)]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return letters[value]
    text = str(value).strip()
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    if text in choices:
        return letters[choices.index(text)]
    raise RowError(
        f"column '{column}': answer {value!r} is not a letter {letters[0]}-{letters[-1]}, "
        "a 0-based index or one of the choices"
    )
