"""Pairwise comparisons judged in both orders, and the rates reported from them.

Every prompt's two answers (`first`, `second` models) are shown to the judge twice: as
(A=first, B=second) and swapped. A model wins a comparison only when both orders pick it; a
pair whose orders disagree is a tie, and counts as a flip (the judge followed the position,
not the answer: the flip rate measures that bias). A verdict missing in either order makes
the comparison invalid: counted, and left out of every rate.

- win rate: the first model's wins over the comparisons that are not ties;
- tie rate: ties over valid comparisons;
- a seeded bootstrap interval (percentile, resampling comparisons) for the win rate;
- the length-controlled win rate: judges prefer longer answers, so a logistic regression of
  the outcome on the (squashed) length difference is fitted and read at equal lengths, the
  idea of AlpacaEval's length-controlled win rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FIRST, SECOND, TIE = "first", "second", "tie"


def combine_orders(verdict_in_order: str | None, verdict_swapped: str | None) -> tuple[str | None, bool]:
    """(outcome, flipped) for one prompt from the two orders' verdicts ("A", "B", "tie").

    In the swapped order, "A" is the second model."""
    if verdict_in_order is None or verdict_swapped is None:
        return None, False
    as_shown = {"A": FIRST, "B": SECOND, "tie": TIE}[verdict_in_order]
    swapped = {"A": SECOND, "B": FIRST, "tie": TIE}[verdict_swapped]
    if as_shown == swapped:
        return as_shown, False
    return TIE, True


@dataclass(frozen=True)
class PairwiseResult:
    comparisons: int  # prompts compared
    invalid: int  # a verdict unreadable in either order
    wins: int
    losses: int
    ties: int
    flips: int
    win_rate: float | None  # wins / (wins + losses)
    tie_rate: float | None  # ties / valid
    flip_rate: float | None  # flips / valid
    win_rate_ci: tuple[float, float] | None
    length_controlled_win_rate: float | None

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "win_rate_ci": list(self.win_rate_ci) if self.win_rate_ci else None}


def summarize(
    outcomes: Sequence[str | None],
    flips: Sequence[bool],
    length_differences: Sequence[float] | None = None,
    *,
    seed: int = 0,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> PairwiseResult:
    """The rates of one comparison of two models; `length_differences` are len(first) -
    len(second) per prompt (characters or tokens), for the length-controlled rate."""
    valid = [i for i, outcome in enumerate(outcomes) if outcome is not None]
    kept = [outcomes[i] for i in valid]
    wins, losses, ties = kept.count(FIRST), kept.count(SECOND), kept.count(TIE)
    flipped = sum(1 for i in valid if flips[i])
    scores = np.array([{FIRST: 1.0, SECOND: 0.0, TIE: 0.5}[o] for o in kept])
    lengths = np.array([length_differences[i] for i in valid], dtype=float) if length_differences is not None else None
    return PairwiseResult(
        comparisons=len(outcomes),
        invalid=len(outcomes) - len(valid),
        wins=wins,
        losses=losses,
        ties=ties,
        flips=flipped,
        win_rate=wins / (wins + losses) if wins + losses else None,
        tie_rate=ties / len(kept) if kept else None,
        flip_rate=flipped / len(kept) if kept else None,
        win_rate_ci=bootstrap_win_rate(scores, seed, resamples, confidence) if wins + losses else None,
        length_controlled_win_rate=length_controlled_win_rate(scores, lengths) if lengths is not None else None,
    )


def _win_rate_of(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    wins = np.sum(scores == 1.0, axis=axis)
    decided = np.sum(scores != 0.5, axis=axis)
    return np.where(decided > 0, wins / np.maximum(decided, 1), 0.5)  # all ties: even


def bootstrap_win_rate(scores: np.ndarray, seed: int, resamples: int, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the win rate, resampling comparisons (seeded)."""
    from scipy.stats import bootstrap

    result = bootstrap(
        (scores,), _win_rate_of, n_resamples=resamples, confidence_level=confidence, method="percentile",
        vectorized=True, rng=np.random.default_rng(seed),
    )  # fmt: skip
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def length_controlled_win_rate(scores: np.ndarray, length_differences: np.ndarray) -> float | None:
    """P(first wins) at equal lengths, from a logistic regression of the outcome (ties as
    0.5) on tanh(length difference / its standard deviation)."""
    from scipy.optimize import minimize

    if len(scores) < 2:
        return None
    spread = float(np.std(length_differences)) or 1.0
    feature = np.tanh(length_differences / spread)

    def loss(theta: np.ndarray) -> float:
        logits = theta[0] + theta[1] * feature
        # Binary cross-entropy, with a small ridge so that a perfect separation stays finite.
        return float(np.mean(np.logaddexp(0.0, logits) - scores * logits) + 1e-3 * np.sum(theta**2))

    theta = minimize(loss, np.zeros(2), method="L-BFGS-B").x
    return float(1.0 / (1.0 + np.exp(-theta[0])))
