"""Serving speed and cost: half the reason to distil.

From each answer's record (kdist.rows.RESPONSE_SCHEMA: seconds from first attempt to final
answer, prompt and completion tokens) and, where the evaluation measured it, the wall time of
the batch that produced the answers:

- latency per answer (mean, median, 90th percentile). An HTTP endpoint's answers are timed one
  by one; an in-process model (hf, vLLM) answers a batch at once, so each of its answers
  carries the batch's time: the wait of one request in that serving setup;
- tokens/s: completion tokens over the wall time of the answering (model start included), the
  throughput of the setup; None where the answers were not produced here (the teacher's
  stored answers, unless a sample was asked again);
- cost per 1,000 answers from the endpoint's configured prices (mean tokens of an answer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdist.endpoints import PriceSection


def serving_speed(answers: list[dict[str, Any]], wall: dict[str, Any] | None, prices: dict[str, Any] | None) -> dict[str, Any]:
    """`answers`: rows with seconds, prompt_tokens, completion_tokens; `wall`: {seconds,
    completion_tokens} of the run that asked them; `prices`: a PriceSection as a dict."""
    seconds = np.array([a["seconds"] for a in answers if a.get("seconds") is not None], dtype=float)
    prompt = np.array([a.get("prompt_tokens") or 0 for a in answers], dtype=float)
    completion = np.array([a.get("completion_tokens") or 0 for a in answers], dtype=float)
    speed: dict[str, Any] = {
        "answers": len(answers),
        "latency_s": _spread(seconds),
        "mean_completion_tokens": round(float(completion.mean()), 2) if len(answers) else None,
        "tokens_per_s": None,
        "cost_per_1000_answers": None,
    }
    if wall and wall.get("seconds"):
        speed["tokens_per_s"] = round(wall["completion_tokens"] / wall["seconds"], 2)
        speed["wall_s"] = round(wall["seconds"], 2)
    if prices and len(answers):
        price = PriceSection(**prices)
        speed["cost_per_1000_answers"] = round(1000 * price.cost(prompt.mean(), completion.mean()), 6)
        speed["currency"] = price.currency
    return speed


def _spread(seconds: np.ndarray) -> dict[str, float] | None:
    if not len(seconds):
        return None
    return {"mean": round(float(seconds.mean()), 4), "p50": round(float(np.percentile(seconds, 50)), 4),
            "p90": round(float(np.percentile(seconds, 90)), 4)}  # fmt: skip
