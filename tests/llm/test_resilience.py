"""Retry-After parsing, error classification and the client-side rate limits."""

from __future__ import annotations

import asyncio
import time

import pytest

from kdist.llm.resilience import RateLimits, failure_for_status, retry_after_seconds


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250", "Retry-After": "1"}, 0.25),
        ({"x-ms-retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "3"}, 3.0),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"}, None),
        ({}, None),
    ],
)
def test_retry_after_from_the_headers_services_send(headers, seconds):
    assert retry_after_seconds(headers) == pytest.approx(seconds) if seconds else retry_after_seconds(headers) is None


@pytest.mark.parametrize(
    ("status", "code", "reason", "transient"),
    [
        (429, "429", "rate_limited", True),
        (500, None, "server_error", True),
        (502, None, "server_error", True),
        (503, None, "server_error", True),
        (504, None, "server_error", True),
        (529, None, "server_error", True),
        (501, None, "server_error", False),
        (505, None, "server_error", False),
        (507, None, "server_error", False),
        (400, "content_filter", "content_filter", False),
        (400, "invalid_request_error", "bad_request", False),
        (401, "401", "auth", False),
        (403, None, "auth", False),
    ],
)
def test_status_classification(status, code, reason, transient):
    failure = failure_for_status(status, code, {})
    assert (failure.reason, failure.transient, failure.status) == (reason, transient, status)


def test_requests_per_minute_paces_beyond_the_window_budget():
    async def run() -> float:
        limits = RateLimits(requests_per_minute=1200)  # 200 per 10 s window, then 20/s
        start = time.monotonic()
        for _ in range(240):
            await limits.acquire(1)
        return time.monotonic() - start

    elapsed = asyncio.run(run())
    assert 1.6 < elapsed < 3.5  # 40 requests beyond the burst at 20/s


def test_tokens_per_minute_paces_and_pause_holds_everyone():
    async def run() -> tuple[float, float]:
        limits = RateLimits(tokens_per_minute=6000)  # 1000 per 10 s window, 100/s
        start = time.monotonic()
        await limits.acquire(1000)
        await limits.acquire(200)
        paced = time.monotonic() - start
        limits.pause(0.3)
        start = time.monotonic()
        await limits.acquire(1)
        return paced, time.monotonic() - start

    paced, paused = asyncio.run(run())
    assert 1.6 < paced < 3.5
    assert paused >= 0.29


def test_slots_bound_what_is_in_flight_and_serve_retries_first():
    from kdist.llm.resilience import Slots

    async def run() -> tuple[list[str], int]:
        slots, order, peak, busy = Slots(2), [], [0], [0]

        async def attempt(name: str, retry: bool) -> None:
            async with slots.hold(retry):
                busy[0] += 1
                peak[0] = max(peak[0], busy[0])
                order.append(name)
                await asyncio.sleep(0.01)
                busy[0] -= 1

        first = [asyncio.create_task(attempt(f"fresh{i}", False)) for i in range(6)]
        await asyncio.sleep(0)  # two hold the slots, four wait
        cancelled = asyncio.create_task(attempt("gone", True))
        await asyncio.sleep(0)
        cancelled.cancel()  # a waiter cancelled in the queue gives up nothing
        retries = [asyncio.create_task(attempt(f"retry{i}", True)) for i in range(2)]
        await asyncio.gather(*first, *retries)
        return order, peak[0]

    order, peak = asyncio.run(run())
    assert peak == 2 and "gone" not in order
    assert order[:4] == ["fresh0", "fresh1", "retry0", "retry1"]  # retries jump the queue
    assert order[4:] == ["fresh2", "fresh3", "fresh4", "fresh5"]
