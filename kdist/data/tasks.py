"""Task templates: how a source row becomes chat messages, and how an answer is parsed back.

One task for now, multiple choice (CommonsenseQA-style: labelled choices, answer one letter).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJ"
INSTRUCTION = "Answer with the letter only."


@dataclass(frozen=True)
class MultipleChoice:
    question: str
    choices: list[str]
    answer: str | None = None  # a letter, when the data is labelled

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.choices)]

    def user_message(self) -> str:
        options = " ".join(f"{letter}) {text}" for letter, text in zip(self.letters, self.choices))
        return f"{self.question} {options} {INSTRUCTION}"

    def messages(self, system_prompt: str | None = None) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return [*turns, {"role": "user", "content": self.user_message()}]


_LEADING_LETTER = re.compile(r"^\s*[(\[]?\s*([A-J])\s*(?:[)\].:]|\b)")
_ANSWER_IS = re.compile(r"answer(?: is)?\s*[:\-]?\s*\(?([A-J])\b", re.IGNORECASE)


def parse_choice(text: str | None, letters: str = LETTERS[:5]) -> str | None:
    """The chosen letter from a model's answer ('B', ' (B)', 'B) apple', 'The answer is B'),
    or None when the text names no allowed letter."""
    if not text:
        return None
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        match = pattern.search(text)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    return None


def parse_answer(task: str | None, meta: str | None, text: str | None) -> str | None:
    """The answer a model's text gives for the prompt's task, or None when it gives none."""
    if task == "multiple_choice":
        choices = json.loads(meta or "{}").get("choices", [])
        return parse_choice(text, LETTERS[: len(choices) or 5])
    return text.strip() if text and text.strip() else None
