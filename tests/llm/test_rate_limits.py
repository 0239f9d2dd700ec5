"""Client-side rate limits through a real backend against the loopback server: the times the
server saw each request arrive are the ground truth (requests_per_minute, tokens_per_minute,
the budget split across replicas, a 429 pausing the other requests in flight, Retry-After as
an HTTP date). The limits are leaky buckets of one 10 s window's budget (kdist.llm.resilience):
a burst of that budget, then the per-minute rate."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from kdist.endpoints import OpenAIEndpoint
from kdist.llm.openai import OpenAIBackend
from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings

MAX_TOKENS = 16
STARTED = 0.0


def _run(server: LLMServer, requests, **fields) -> tuple[list, list[tuple[float, str, str]]]:
    defaults = dict(backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=10.0, concurrency=16,
                    sampling={"max_tokens": MAX_TOKENS})  # fmt: skip
    backend = OpenAIBackend(OpenAIEndpoint(model="m", endpoint=server.openai_base_url, **{**defaults, **fields}))
    global STARTED
    STARTED = time.time()  # the buckets start full no earlier than this
    try:
        responses = backend.generate(requests)
    finally:
        backend.close()
    return responses, [tuple(a) for a in server.stats()["arrivals"]]


def _offsets(arrivals) -> list[float]:
    first = arrivals[0][0]
    return [at - first for at, _, _ in arrivals]


@pytest.mark.parametrize(("rpm", "replicas"), [(120, 1), (240, 2)])
def test_requests_per_minute_per_replica_burst_then_pace(make_requests, rpm, replicas):
    """120 a minute for this worker (240 split over 2 replicas): 20 at once (one 10 s
    window), then one every 0.5 s."""
    with LLMServer(ServerSettings()) as server:
        responses, arrivals = _run(server, make_requests(24), requests_per_minute=rpm, replicas=replicas)
    assert all(r.error is None for r in responses) and len(arrivals) == 24
    # Times from the start of the calls (the first arrival may be late on a busy machine while
    # the bucket leaks): the k-th request never arrives ahead of the budget; the budget not
    # split would send all 24 at once, 2 s ahead at the last.
    offsets = [at - STARTED for at, _, _ in arrivals]
    per_second, burst = rpm / replicas / 60, rpm / replicas / 6
    for k, at in enumerate(offsets):
        assert at >= (k + 1 - burst) / per_second - 0.02, (k, at)
    assert offsets[-1] < 2.0 + 8.0  # and not much slower than it (a shared machine)


def test_a_budget_not_split_bursts_all_at_once(make_requests):
    with LLMServer(ServerSettings()) as server:
        _, arrivals = _run(server, make_requests(24), requests_per_minute=240, replicas=1)
    assert _offsets(arrivals)[-1] < 0.4  # 24 of a 40-request window


def test_tokens_per_minute_counts_prompt_and_answer_tokens(make_requests):
    """6,000 a minute: 1,000 tokens at once, then 100 a second; a request costs its prompt at
    about 4 characters a token plus max_tokens (what the answer may take)."""
    requests = make_requests(34)
    cost = {r.id: len(r.messages[0]["content"]) // 4 + MAX_TOKENS for r in requests}
    by_key = {}
    with LLMServer(ServerSettings()) as server:
        from kdist.testing.llm_server import message_key

        by_key = {message_key(r.messages): cost[r.id] for r in requests}
        _, arrivals = _run(server, requests, tokens_per_minute=6000)
    offsets, spent = [at - STARTED for at, _, _ in arrivals], 0  # from the start of the calls
    for (_, key, _), at in zip(arrivals, offsets):
        spent += by_key[key]
        assert spent <= 1000 + 100 * (at + 0.02), (spent, at)
    assert offsets[-1] >= (sum(cost.values()) - 1000) / 100 - 0.15
    assert offsets[-1] < 3 * (sum(cost.values()) - 1000) / 100 + 1.0


def test_a_429_pauses_the_other_requests_in_flight(make_requests):
    """One row's 429 with Retry-After 0.6 s holds back every row of the worker, not just the
    one that was refused: after a 429, only requests already on the wire arrive until the
    pause ends."""
    plan = FaultPlan(transient={"rate_limit": 0.1}, max_consecutive=1, retry_after_s=0.6, seed=5)
    with LLMServer(ServerSettings(faults=plan, latency_s=0.02)) as server:
        responses, arrivals = _run(server, make_requests(60), concurrency=4)
    assert all(r.error is None for r in responses)
    refused = [at for at, _, outcome in arrivals if outcome == "rate_limit"]
    assert len(refused) >= 3
    for at in refused:
        # reply after 0.02 s; up to 3 other requests were already sent by then
        during = [a for a, _, _ in arrivals if at + 0.15 < a < at + 0.02 + 0.6 - 0.05]
        assert during == [], (at, [round(a - at, 3) for a in during])
    attempts = defaultdict(int)
    for _, key, _ in arrivals:
        attempts[key] += 1
    assert sorted(r.attempts for r in responses) == sorted(attempts.values())


def test_retry_after_as_an_http_date_is_honoured(make_requests):
    """`Retry-After: Wed, 02 Dec 2026 14:00:03 GMT` (whole seconds, no -ms header): every row's
    retry waits until that date, at least 1 s here (2 s asked, the date cut to the second)."""
    plan = FaultPlan(transient={"rate_limit": 1.0}, max_consecutive=1, retry_after_s=2.0, retry_after_http_date=True)
    with LLMServer(ServerSettings(faults=plan)) as server:
        responses, arrivals = _run(server, make_requests(4), concurrency=4)
    assert [r.attempts for r in responses] == [2] * 4 and all(r.error is None for r in responses)
    times = defaultdict(list)
    for at, key, outcome in arrivals:
        times[key].append((at, outcome))
    for (first, why), (second, ok) in times.values():
        assert (why, ok) == ("rate_limit", "ok")
        assert 1.0 - 0.05 <= second - first < 2.0 + 1.0
