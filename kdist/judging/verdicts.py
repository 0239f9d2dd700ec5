"""Reading a judge's answer: a score on the rubric's scale, or a pairwise verdict.

Judges are asked for JSON (`{"score": 4, "rationale": "..."}`) but answer with text around
it, in code fences, as "Score: 4/5", or not at all. A verdict that cannot be read is None and
is counted as unparsable by the caller: it is never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# The last number that follows a "score"/"rating"/"grade" word, e.g. "Score: 4", "rating = 0.7".
_LABELLED_NUMBER = re.compile(r"(?:score|rating|grade)\s*(?:\*\*)?\s*[:=]?\s*(?:\*\*)?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)(?:\s*/\s*\d+)?(?![\w.])")
_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_VERDICT_WORD = re.compile(r"\b(?:verdict|winner|better)\s*(?:\*\*)?\s*[:=]?\s*(?:\*\*)?\s*\[*\s*(A|B|tie)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Scale:
    """A closed score range; scores are stored as given and normalised to [0, 1]."""

    low: float
    high: float

    @classmethod
    def parse(cls, text: str) -> Scale:
        low, _, high = text.partition("-")
        return cls(float(low), float(high))

    def normalise(self, score: float) -> float:
        return (score - self.low) / (self.high - self.low)

    def __contains__(self, score: float) -> bool:
        return self.low <= score <= self.high


@dataclass(frozen=True)
class Grade:
    score: float | None  # on the rubric's scale; None: unparsable
    rationale: str


def parse_grade(text: str | None, scale: Scale) -> Grade:
    """The score (within the scale) and rationale of a single-grading answer."""
    if not text:
        return Grade(None, "")
    found = _from_json(text, "score")
    if found is not None:
        score, rationale = found
    else:
        score, rationale = _from_text(text), _rationale_of(text)
    if score is None or score not in scale:
        return Grade(None, rationale)
    return Grade(score, rationale)


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or "tie" from a pairwise answer; None when it names none (or both)."""
    if not text:
        return None
    found = _from_json(text, "verdict")
    candidate = str(found[0]) if found is not None else None
    if candidate is None:
        labelled = _VERDICT_WORD.findall(text)
        candidate = labelled[-1] if labelled else text
    candidate = candidate.strip().strip("[]().*\"'").lower()
    return {"a": "A", "b": "B", "tie": "tie"}.get(candidate)


def _from_json(text: str, key: str) -> tuple[float | str, str] | None:
    for blob in reversed(_JSON_OBJECT.findall(text)):
        try:
            data = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if key in data:  # the pattern's braces make every parsed blob a dict
            value = data[key]
            if key == "score":
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    continue
                try:
                    value = float(value)
                except ValueError:
                    continue
            return value, str(data.get("rationale") or data.get("reason") or "")
    return None


def _from_text(text: str) -> float | None:
    labelled = _LABELLED_NUMBER.findall(text)
    if labelled:
        return float(labelled[-1])
    numbers = _NUMBER.findall(text)
    # A bare answer ("4", "4/5"): one number only; several unlabelled numbers are ambiguous.
    return float(numbers[0]) if len(numbers) == 1 else None


def _rationale_of(text: str) -> str:
    return " ".join(text.split())[:500]
