"""The one small interface every model backend implements: chat requests in, responses out.

A backend never raises for a single row: a row that fails comes back as a ModelResponse with
`error` set (the reason), `status` (HTTP status when there was one) and `attempts`, so one bad
row or one 429 never kills a long run. Exceptions are for the whole backend being unusable
(bad endpoint config, missing key, model dir absent).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ChatRequest:
    id: str
    messages: list[dict[str, str]]
    request_hash: str
    candidate: str = ""


@dataclass
class ModelResponse:
    id: str
    request_hash: str
    model: str
    candidate: str = ""
    response: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Per generated token: {"token_ids": [...k], "logprobs": [...k]}, the model's top-k.
    top_logprobs: list[dict[str, list[Any]]] | None = None
    error: str | None = None
    status: int | None = None
    attempts: int = 1
    # From the first attempt going out to the final answer (retries and backoff included).
    seconds: float | None = None

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


class Backend(Protocol):
    name: str

    def generate(self, requests: list[ChatRequest]) -> list[ModelResponse]:
        """One response per request, in the same order; per-row failures are error rows."""
        ...

    def close(self) -> None: ...


def request_hash(model: str, messages: list[dict[str, str]], sampling: dict[str, Any], sample: int | None = None) -> str:
    """Stable id of what is asked: a rerun with the same hash is the same (paid) request.
    `sample` numbers the asks of one sampled prompt; None (a single ask) leaves it out."""
    sample_part = {} if sample is None else {"sample": sample}
    canonical = json.dumps(
        {"model": model, "messages": messages, "sampling": sampling, **sample_part},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
