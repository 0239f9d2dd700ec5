"""`kdist plan`: what the generate stage will ask and what it will cost, before any request.

From the prompts (prepare's output) and the teacher's endpoint: the rows to ask (less those
already answered in the responses store, as a rerun would skip them), their input tokens,
the output tokens as a range (none up to every row reaching `max_tokens`, with an estimate
only from a sample of requests, sent only when asked for), the cost from the configured
prices, and the wall time the configured rate limits allow.

Input tokens come from the teacher's own tokenizer and chat template when the model is local;
otherwise from a stated heuristic (4 characters a token, 4 tokens of framing per message and 3
to prime the reply: OpenAI's rule of thumb for chat prompts). No Ray: the prompts are read
in batches in this process.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from kdist import storage
from kdist.config import RunConfig
from kdist.endpoints import Endpoint, RemoteEndpoint
from kdist.errors import UsageError
from kdist.llm.base import ChatRequest
from kdist.llm.batch import chat_requests, hash_requests, request_identity
from kdist.llm.store import ResponseStore
from kdist.stages import StageContext

BATCH_ROWS = 8192
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
REPLY_PRIMING_TOKENS = 3
HEURISTIC = "heuristic: 4 characters a token + 4 a message + 3 (no local tokenizer)"
BATCH_WINDOW = "the batch window: up to 24 h a batch, often minutes to hours"


@dataclass
class Plan:
    splits: list[str]
    rows: int  # prompts of the teacher's splits
    answered: int  # already answered in responses/: a run skips them
    to_ask: int
    input_tokens: int
    input_tokens_method: str
    output_tokens_max: int  # every row reaching max_tokens
    output_tokens_estimate: int | None  # from the sample, when one was asked for
    sample: dict[str, Any] | None
    cost: dict[str, Any] | None  # low (no output) .. high (max_tokens), and the estimate
    minimum_wall_seconds: float | None  # what the configured rate limits allow at best
    limited_by: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_generate(config: RunConfig, root: str, sample: int = 0) -> Plan:
    teacher = config.teacher
    prompts_uri = StageContext(config, root).dir("prepare")
    if not storage.exists(prompts_uri):
        raise UsageError(f"plan reads the prompts ({prompts_uri}): run `kdist prepare` with this config first (it asks no model)")
    counter = _token_counter(teacher)
    done = ResponseStore(StageContext(config, root).dir("generate")).succeeded_hashes()
    identity, sampling = request_identity(teacher), teacher.sampling.model_dump()
    rows = answered = input_tokens = 0
    todo_sample: list[ChatRequest] = []
    for batch in _prompt_batches(prompts_uri, teacher.splits):
        hashed = hash_requests(batch, identity, sampling)
        known = done.contains(hashed["request_hash"])
        rows += hashed.num_rows
        answered += int(known.sum())
        waiting = hashed.filter(pa.array(~known))
        input_tokens += sum(counter(messages) for messages in waiting["messages"].to_pylist())
        if len(todo_sample) < sample:
            todo_sample.extend(chat_requests(waiting.slice(0, sample - len(todo_sample))))
    to_ask = rows - answered
    plan = Plan(
        splits=list(teacher.splits), rows=rows, answered=answered, to_ask=to_ask, input_tokens=input_tokens,
        input_tokens_method=getattr(counter, "method", HEURISTIC), output_tokens_max=to_ask * teacher.sampling.max_tokens,
        output_tokens_estimate=None, sample=None, cost=None, minimum_wall_seconds=None, limited_by=None,
    )  # fmt: skip
    if todo_sample:
        _measure_sample(plan, teacher, todo_sample)
    plan.cost = _cost(plan, teacher)
    plan.minimum_wall_seconds, plan.limited_by = _rate_limited_seconds(plan, teacher)
    if teacher.kind == "openai_batch":  # the provider's window, not our limits, sets the time
        plan.minimum_wall_seconds, plan.limited_by = None, BATCH_WINDOW
    return plan


def _prompt_batches(prompts_uri: str, splits: list[str]) -> Iterator[pa.Table]:
    fs, path = storage.filesystem_for(prompts_uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=False)
    wanted = pc.field("split").isin(splits)
    for batch in dataset.to_batches(columns=["id", "messages", "split"], filter=wanted, batch_size=BATCH_ROWS):
        table = pa.Table.from_batches([batch])
        yield table.append_column("candidate", pa.array(["teacher"] * table.num_rows, pa.string()))


def _token_counter(endpoint: Endpoint):  # -> Callable[[list[dict]], int] with a .method
    model = None if isinstance(endpoint, RemoteEndpoint) else Path(endpoint.model).expanduser()
    if model is not None and model.is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model))

        def count(messages: list[dict[str, Any]]) -> int:
            plain = [{"role": m["role"], "content": m["content"]} for m in messages]
            return len(tokenizer.apply_chat_template(plain, tokenize=True, add_generation_prompt=True, return_dict=False))

        count.method = f"the teacher's tokenizer and chat template ({model})"  # type: ignore[attr-defined]
        return count

    def estimate(messages: list[dict[str, Any]]) -> int:
        chars = sum(len(m["content"] or "") for m in messages)
        return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages) + REPLY_PRIMING_TOKENS

    return estimate


def _measure_sample(plan: Plan, endpoint: Endpoint, requests: list[ChatRequest]) -> None:
    """Ask the endpoint for `requests` (paid; the answers are not stored) and scale up."""
    from kdist.llm import build_backend

    if endpoint.kind == "vllm":
        raise UsageError("plan --sample: the vllm kind runs inside the cluster's Ray Data pipeline; sample with the generate stage")
    if endpoint.kind == "openai_batch":
        raise UsageError("plan --sample: a batch answers within 24 h; sample the same model with teacher.kind=openai")
    backend = build_backend(endpoint)
    try:
        responses = backend.generate(requests)
    finally:
        backend.close()
    answered = [r for r in responses if r.error is None]
    if not answered:
        errors = sorted({r.error or "" for r in responses})
        raise UsageError(f"plan --sample: no request of the sample was answered ({'; '.join(errors)[:200]})")
    completion = statistics.fmean(r.completion_tokens for r in answered)
    seconds = [r.seconds for r in answered if r.seconds is not None]
    plan.output_tokens_estimate = round(completion * plan.to_ask)
    plan.sample = {
        "requests": len(requests), "answered": len(answered),
        "mean_completion_tokens": round(completion, 1),
        "mean_prompt_tokens_reported": round(statistics.fmean(r.prompt_tokens for r in answered), 1),
        "mean_seconds": round(statistics.fmean(seconds), 3) if seconds else None,
    }  # fmt: skip


def _cost(plan: Plan, endpoint: Endpoint) -> dict[str, Any] | None:
    prices = getattr(endpoint, "prices", None)
    if prices is None:
        return None

    def cost(output_tokens: int) -> float:
        return round(prices.cost(plan.input_tokens, output_tokens), 4)

    estimate = cost(plan.output_tokens_estimate) if plan.output_tokens_estimate is not None else None
    return {"low": cost(0), "high": cost(plan.output_tokens_max), "estimate": estimate, "currency": prices.currency}


def _rate_limited_seconds(plan: Plan, endpoint: Endpoint) -> tuple[float | None, str | None]:
    """The fastest the configured limits allow: requests over requests_per_minute, tokens
    (input plus the expected or maximum output) over tokens_per_minute, and, with a sample's
    latency, the request slots (replicas x concurrency) kept full."""
    bounds: dict[str, float] = {}
    if isinstance(endpoint, RemoteEndpoint):
        if endpoint.requests_per_minute:
            bounds["requests_per_minute"] = 60.0 * plan.to_ask / endpoint.requests_per_minute
        if endpoint.tokens_per_minute:
            output = plan.output_tokens_estimate if plan.output_tokens_estimate is not None else plan.output_tokens_max
            bounds["tokens_per_minute"] = 60.0 * (plan.input_tokens + output) / endpoint.tokens_per_minute
        if plan.sample and plan.sample["mean_seconds"]:
            slots = endpoint.replicas * endpoint.concurrency
            bounds["latency x slots"] = plan.to_ask * plan.sample["mean_seconds"] / slots
    if not bounds:
        return None, None
    limit = max(bounds, key=bounds.__getitem__)
    return round(bounds[limit], 1), limit


def format_plan(plan: Plan) -> str:
    lines = [
        f"rows: {plan.rows} in splits {', '.join(plan.splits)}; already answered: {plan.answered}; to ask: {plan.to_ask}",
        f"input tokens: {plan.input_tokens} ({plan.input_tokens_method})",
        f"output tokens: 0 to {plan.output_tokens_max} (max_tokens per row)"
        + (f", about {plan.output_tokens_estimate} from a sample of {plan.sample['answered']}" if plan.sample else ""),
    ]
    if plan.cost:
        estimate = f", about {plan.cost['estimate']}" if plan.cost["estimate"] is not None else ""
        lines.append(f"cost: {plan.cost['low']} to {plan.cost['high']} {plan.cost['currency']}{estimate}")
    if plan.minimum_wall_seconds is not None:
        lines.append(f"wall time: at least {plan.minimum_wall_seconds:.0f} s (bound by {plan.limited_by})")
    elif plan.limited_by == BATCH_WINDOW:
        lines.append(f"wall time: {BATCH_WINDOW}")
    else:
        lines.append("wall time: no rate limit configured; it depends on the endpoint's latency (plan --sample N measures it)")
    return "\n".join(lines)
