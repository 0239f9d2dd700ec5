"""Retries, backoff and client-side rate limits shared by the remote teacher backends.

Remote endpoints fail in two ways that need opposite handling: transient failures (429, 5xx,
timeouts, dropped connections, a truncated body) are retried with exponential backoff and
jitter, waiting at least as long as the service asked (Retry-After, retry-after-ms,
x-ratelimit-reset-*); permanent failures (400, content filter, 401/403, 501 and the other
5xx that say "never") are never retried, because asking again costs money and gives the same
answer. The SDKs' own retries are turned off by the backends so that every attempt is counted
here, once. A refused key is not a per-row failure at all: `KeyBreaker` stops the worker
after a few in a row, rather than paying to hear 401 for every row of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import heapq
import itertools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from kdist.errors import UsageError

T = TypeVar("T")

# Reasons an error row can carry (the run summary counts failures by these).
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CONNECTION = "connection"
MALFORMED = "malformed_response"
CONTENT_FILTER = "content_filter"
BAD_REQUEST = "bad_request"
AUTH = "auth"

# Statuses another attempt may cure: timeouts and conflicts, rate limits, and the 5xx of an
# overloaded or restarting service (Cloudflare's 520-524 and the 529 "overloaded" of some LLM
# gateways included). Every other 5xx (501 Not Implemented, 505, 507...) says the request will
# never work there: permanent.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
# Consecutive 401/403 answers after which a worker stops: the key is wrong, not the row.
KEY_REFUSALS_TO_STOP = 5


class RequestFailed(Exception):
    """One attempt failed; `transient` says whether another attempt may succeed."""

    def __init__(
        self,
        reason: str,
        *,
        transient: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(f"{reason} (status {status}): {detail}" if detail else reason)
        self.reason = reason
        self.transient = transient
        self.status = status
        self.retry_after_s = retry_after_s
        self.detail = detail.strip().splitlines()[0] if detail.strip() else ""
        self.attempts = 1
        self.seconds = 0.0  # first attempt to the final failure, set by call_with_retries


class KeyRefused(UsageError):
    """The endpoint refused the key (401/403) several times in a row: the stage stops."""


class KeyBreaker:
    """Counts consecutive 401/403 answers of one worker; any other answer resets the count.

    The message names the endpoint and the key's variable, never the key."""

    def __init__(self, endpoint: str, key_variable: str | None, limit: int = KEY_REFUSALS_TO_STOP) -> None:
        self.endpoint, self.key_variable, self.limit = endpoint, key_variable, limit
        self.in_a_row = 0
        self.last_status: int | None = None

    @property
    def open(self) -> bool:
        return self.in_a_row >= self.limit

    def record(self, reason: str | None, status: int | None) -> None:
        if reason == AUTH:
            self.in_a_row += 1
            self.last_status = status
        else:
            self.in_a_row = 0

    def error(self) -> KeyRefused:
        where = f"the key in ${self.key_variable}" if self.key_variable else "the Entra ID token (no api_key_env)"
        return KeyRefused(
            f"{self.endpoint} refused {where}: {self.in_a_row} answers in a row were {self.last_status} "
            "(wrong or expired key, or no access to this model); stopped rather than ask every row"
        )


def failure_for_status(
    status: int, code: str | None, headers: Mapping[str, str] | None, detail: str = ""
) -> RequestFailed:
    """Classify an HTTP error reply the same way for every backend."""
    code = (code or "").lower()
    wait = retry_after_seconds(headers or {})
    if status == 429:
        return RequestFailed(RATE_LIMITED, transient=True, status=status, retry_after_s=wait, detail=detail)
    if status in TRANSIENT_STATUSES:
        return RequestFailed(SERVER_ERROR, transient=True, status=status, retry_after_s=wait, detail=detail)
    if status >= 500:
        return RequestFailed(SERVER_ERROR, transient=False, status=status, detail=detail)
    if "content_filter" in code or "content_filter" in detail.lower():
        return RequestFailed(CONTENT_FILTER, transient=False, status=status, detail=detail)
    if status in (401, 403):
        return RequestFailed(AUTH, transient=False, status=status, detail=detail)
    return RequestFailed(BAD_REQUEST, transient=False, status=status, detail=detail)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _duration_seconds(text: str) -> float | None:
    """'1s', '6m0s', '20ms', '0.5' -> seconds (the x-ratelimit-reset-* formats)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(value) * scale[unit] for value, unit in parts)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """How long the service asked us to wait, from the headers OpenAI and Azure send."""
    lower = {key.lower(): value for key, value in headers.items()}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        if name in lower:
            try:
                return float(lower[name]) / 1000.0
            except ValueError:
                pass
    if "retry-after" in lower:
        value = lower["retry-after"]
        try:
            return float(value)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    waits = []
    for kind in ("requests", "tokens"):
        if lower.get(f"x-ratelimit-remaining-{kind}") == "0":
            reset = _duration_seconds(lower.get(f"x-ratelimit-reset-{kind}", ""))
            if reset is not None:
                waits.append(reset)
    return max(waits) if waits else None


class RateLimits:
    """Requests/minute and tokens/minute budgets, plus a shared pause the service can ask for.

    The budgets are leaky buckets refilled over 10-second windows (services enforce per-minute
    quotas over short windows, so a full minute's burst at the start would itself draw 429s).
    """

    WINDOW_S = 10.0

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None) -> None:
        self._requests = self._bucket(requests_per_minute)
        self._tokens = self._bucket(tokens_per_minute)
        self._paused_until = 0.0

    def _bucket(self, per_minute: float | None) -> AsyncLimiter | None:
        if not per_minute:
            return None
        per_window = per_minute * self.WINDOW_S / 60.0
        if per_window >= 1:
            return AsyncLimiter(per_window, self.WINDOW_S)
        return AsyncLimiter(1, 60.0 / per_minute)

    async def acquire(self, tokens: int) -> None:
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None:
            await self._tokens.acquire(min(max(tokens, 1), self._tokens.max_rate))

    def pause(self, seconds: float) -> None:
        """The service said 'wait': hold back every request of this client, not just one row."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)


class Slots:
    """`n` requests on the wire at once, where a retry takes the next free slot before any
    first attempt: a row that failed once does not go to the back of its worker's queue
    (hundreds of fresh rows in a streaming worker), so its time to a final answer is its own
    backoff and attempts, not the queue's. FIFO within each kind."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def hold(self, retry: bool) -> AsyncIterator[None]:
        await self._acquire(0 if retry else 1)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, rank: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (rank, next(self._order), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # granted just as it was cancelled: pass the slot on
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():  # skip waiters cancelled meanwhile
                granted.set_result(None)
                return
        self._free += 1


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    timeout_s: float = 60.0


class _WaitRetryAfterOrBackoff:
    """Wait what the service asked for (plus a little jitter), else exponential backoff."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = wait_exponential_jitter(
            multiplier=policy.initial_backoff_s, max=policy.max_backoff_s, jitter=policy.initial_backoff_s
        )
        self._cap = policy.max_backoff_s

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        asked = getattr(error, "retry_after_s", None)
        if asked is not None:
            return min(asked * 1.1, self._cap)
        return self._backoff(state)


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    limits: RateLimits,
    slots: Slots,
    estimated_tokens: int,
    started: asyncio.Event | None = None,
) -> tuple[T, int, float]:
    """Run `call` until it succeeds or fails permanently; return (result, attempts, seconds),
    seconds from the first attempt going out to the final answer (not the wait for a slot
    before it: that is the worker's queue, not the row's cost).

    On final failure raises RequestFailed with `attempts` and `seconds` set. Each attempt
    holds one of the concurrency `slots` only while it is on the wire, not while it backs
    off. `started` is set when the first attempt goes out.
    """
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=_WaitRetryAfterOrBackoff(policy),
        retry=retry_if_exception(lambda err: isinstance(err, RequestFailed) and err.transient),
        reraise=True,
    )
    attempts = 0
    first_sent: list[float] = []
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                result = await _one_attempt(call, policy, limits, slots, estimated_tokens, first_sent, started)
        return result, attempts, _since(first_sent)
    except RequestFailed as failed:
        failed.attempts, failed.seconds = attempts, _since(first_sent)
        raise


def _since(first_sent: list[float]) -> float:
    return time.monotonic() - first_sent[0] if first_sent else 0.0


async def _one_attempt(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    limits: RateLimits,
    slots: Slots,
    estimated_tokens: int,
    first_sent: list[float],
    started: asyncio.Event | None,
) -> T:
    async with slots.hold(retry=bool(first_sent)):
        await limits.acquire(estimated_tokens)
        if not first_sent:
            first_sent.append(time.monotonic())
            if started is not None:
                started.set()
        try:
            return await asyncio.wait_for(call(), policy.timeout_s)
        except TimeoutError:
            raise RequestFailed(TIMEOUT, transient=True, detail=f"no reply in {policy.timeout_s:g} s") from None
        except RequestFailed as failed:
            if failed.reason == RATE_LIMITED and failed.retry_after_s:
                limits.pause(failed.retry_after_s)
            raise
