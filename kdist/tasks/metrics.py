"""Metric functions the tasks share. Judge agreement (threshold, Pearson, Spearman) is
kdist.judging.agreement's: one implementation for the grading task and the judges.

Text normalisation and token F1 follow the SQuAD evaluation script (lowercase, no punctuation,
no articles, whitespace collapsed); ROUGE comes from Google's `rouge-score` package.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(answer: str | None, references: Sequence[str]) -> float:
    if answer is None:
        return 0.0
    return float(any(normalise(answer) == normalise(ref) for ref in references))


def token_f1(answer: str | None, references: Sequence[str]) -> float:
    """Best F1 over the references of the bag of normalised tokens."""
    if answer is None:
        return 0.0
    return max((_f1(normalise(answer).split(), normalise(ref).split()) for ref in references), default=0.0)


def _f1(predicted: list[str], gold: list[str]) -> float:
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(answer: str | None, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (Porter stemming, as the summarisation papers report them)."""
    if answer is None:
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    scores = _rouge_scorer().score(reference, answer)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


_SCORER = None


def _rouge_scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return _SCORER
