"""Hard caps on what a run may spend: `teacher.max_cost` and `teacher.max_output_tokens`.

A request goes out only when what was spent plus the worst case of everything in flight plus
its own worst case stays within the caps; the first request that does not fit stops the
asking (the rows left are not asked, and counted). When an answer comes back its reservation
is replaced by what it really used.

The worst case of a request: its prompt at one token per UTF-8 byte of its messages (a
byte-level tokenizer never makes more tokens than bytes) plus the chat framing, and
`max_tokens` of output. Pessimistic on purpose: near the cap a few rows that would have fit
are left, never a cent over it.

What counts as spent: every answer already in the responses store (its reported usage at the
configured prices), so a rerun after a crash or a cap reached does not get the budget anew.

Across Ray actors the ledger is one small Ray actor (`shared_ledger`): each request's
reservation is one actor call, a millisecond against a remote call's hundreds, and the spend
is exact across any number of workers (a fixed share per worker would strand budget on
workers that finish early). The batch backend keeps its ledger in the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc

from kdist.endpoints import Endpoint, PriceSection
from kdist.llm.base import ChatRequest

# Per message and to prime the reply (OpenAI's framing; kdist.plan uses the same).
FRAMING_PER_MESSAGE = 4
FRAMING_REPLY = 3


@dataclass(frozen=True)
class Caps:
    max_cost: float | None
    max_output_tokens: int | None
    prices: PriceSection | None

    @classmethod
    def of(cls, endpoint: Endpoint) -> Caps | None:
        """The endpoint's caps, or None when it has none (only the teacher's role has them)."""
        max_cost, max_output = getattr(endpoint, "max_cost", None), getattr(endpoint, "max_output_tokens", None)
        if max_cost is None and max_output is None:
            return None
        return cls(max_cost, max_output, getattr(endpoint, "prices", None))

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return self.prices.cost(prompt_tokens, completion_tokens) if self.prices else 0.0


def worst_case_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """An upper bound on a prompt's tokens (see the module docstring)."""
    text_bytes = sum(len(str(message.get("content") or "").encode()) for message in messages)
    return text_bytes + FRAMING_PER_MESSAGE * len(messages) + FRAMING_REPLY


class Ledger:
    """Spent and reserved cost and output tokens against the caps. Plain Python: the batch
    backend uses it in the driver, `shared_ledger` makes it one Ray actor for the workers."""

    def __init__(self, caps: Caps, spent_cost: float = 0.0, spent_output: int = 0) -> None:
        self.caps = caps
        self.spent_cost, self.spent_output = spent_cost, spent_output
        self.reserved_cost = 0.0
        self.reserved_output = 0
        self.stopped = False
        self.asked = 0

    def reserve(self, prompt_tokens: int, max_tokens: int, force: bool = False) -> bool:
        """Reserve one request's worst case if it fits; the first that does not stops the
        ledger (every later call answers False: the stage stops asking). `force`: reserve
        what is in flight already (a batch an earlier run created), fitting or not."""
        cost = self.caps.cost(prompt_tokens, max_tokens)
        if force:
            self.reserved_cost += cost
            self.reserved_output += max_tokens
            return True
        fits_cost = self.caps.max_cost is None or self.spent_cost + self.reserved_cost + cost <= self.caps.max_cost
        fits_output = (
            self.caps.max_output_tokens is None
            or self.spent_output + self.reserved_output + max_tokens <= self.caps.max_output_tokens
        )
        if self.stopped or not (fits_cost and fits_output):
            self.stopped = True
            return False
        self.reserved_cost += cost
        self.reserved_output += max_tokens
        self.asked += 1
        return True

    def settle(self, reserved: tuple[int, int], prompt_tokens: int, completion_tokens: int) -> None:
        """Replace a reservation (prompt_tokens, max_tokens) by what the answer used."""
        self.reserved_cost -= self.caps.cost(*reserved)
        self.reserved_output -= reserved[1]
        self.spent_cost += self.caps.cost(prompt_tokens, completion_tokens)
        self.spent_output += completion_tokens

    def state(self) -> dict[str, Any]:
        return {
            "stopped": self.stopped, "asked": self.asked, "spent_cost": round(self.spent_cost, 6),
            "spent_output_tokens": self.spent_output, "max_cost": self.caps.max_cost,
            "max_output_tokens": self.caps.max_output_tokens,
        }  # fmt: skip


def spent_tokens(store: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of every answer in a responses store."""
    prompt = completion = 0
    for _, table in store.read_columns(["prompt_tokens", "completion_tokens"]):
        prompt += pc.sum(table["prompt_tokens"]).as_py() or 0
        completion += pc.sum(table["completion_tokens"]).as_py() or 0
    return prompt, completion


def ledger_for(endpoint: Endpoint, store: Any) -> Ledger | None:
    """A ledger for the endpoint's caps, starting from what the store's answers cost."""
    caps = Caps.of(endpoint)
    if caps is None:
        return None
    prompt, completion = spent_tokens(store)
    return Ledger(caps, caps.cost(prompt, completion), completion)


def shared_ledger(ledger: Ledger) -> Any:
    """The ledger as one Ray actor (no CPU of its own), for the workers to share."""
    import ray

    return ray.remote(num_cpus=0)(Ledger).remote(ledger.caps, ledger.spent_cost, ledger.spent_output)


class BudgetGate:
    """A worker's side of the shared ledger: reserve before a request goes out, settle when
    its answer is final. Once refused, the worker asks nothing more."""

    def __init__(self, ledger: Any, max_tokens: int) -> None:
        self.ledger, self.max_tokens = ledger, max_tokens
        self.stopped = False

    async def admit(self, request: ChatRequest) -> tuple[int, int] | None:
        if self.stopped:
            return None
        reserved = (worst_case_prompt_tokens(request.messages), self.max_tokens)
        if not await self.ledger.reserve.remote(*reserved):
            self.stopped = True
            return None
        return reserved

    async def settle(self, reserved: tuple[int, int], prompt_tokens: int, completion_tokens: int) -> None:
        await self.ledger.settle.remote(reserved, prompt_tokens, completion_tokens)
