"""What the HTTP model backends (openai, azure) share: a batch of requests fanned out as
concurrent async calls, each ending as exactly one ModelResponse.

A backend subclass implements only `_open()` (create `self._client`, and `self._credential`
for Entra ID, both closed by `_aclose()`) and `_complete(request)` (one attempt, raising
RequestFailed). Concurrency is a semaphore per worker, not a thread per request; the
semaphore, rate limiter and SDK client are created inside the event loop that uses them.
Callers inside an event loop await `answer` (one row; the batch layer's stream) or
`agenerate`; plain callers use `generate`, which runs the same code on a private loop thread.

What a row's error says is scrubbed of the endpoint's secrets and cut (kdist.llm.scrub); a key
refused a few times in a row raises KeyRefused instead of failing every row (KeyBreaker).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kdist.endpoints import RemoteEndpoint
from kdist.llm.base import ChatRequest, ModelResponse
from kdist.llm.resilience import (
    CONNECTION, KeyBreaker, KeyRefused, RateLimits, RequestFailed, RetryPolicy, Slots, call_with_retries,
)  # fmt: skip
from kdist.llm.scrub import Scrubber, without_credentials

T = TypeVar("T")
log = logging.getLogger(__name__)


def error_reason(error: str | None) -> str | None:
    """The short reason of an error row ('rate_limited', 'content_filter', ...)."""
    return error.split(":", 1)[0] if error else None


def api_key_from_env(endpoint: RemoteEndpoint) -> str | None:
    """The key named by `api_key_env`; a named but unset variable is a setup error."""
    if not endpoint.api_key_env:
        return None
    key = os.environ.get(endpoint.api_key_env)
    if not key:
        raise RuntimeError(f"api_key_env names {endpoint.api_key_env}, which is not set")
    return key


def endpoint_address(url: str) -> str:
    """host:port of an endpoint URL, the port filled in from the scheme."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def connection_failure(error: BaseException, url: str) -> RequestFailed | None:
    """A failure to reach the endpoint at all, named with its address, or None when `error`
    is something else. Looks through the exception chain: SDK transports wrap the socket
    error, and the openai client's aiohttp transport even reports a refused connection as a
    connect timeout."""
    for cause in _chain(error):
        if isinstance(cause, ConnectionRefusedError):
            what = "connection refused"
        elif isinstance(cause, socket.gaierror):
            what = "host name not resolved"
        elif isinstance(cause, (ConnectionResetError, ConnectionAbortedError)):
            what = "connection reset"
        else:
            continue
        return RequestFailed(CONNECTION, transient=True, detail=f"{what} at {endpoint_address(url)}")
    return None


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and not any(current is earlier for earlier in seen):
        seen.append(current)
        # aiohttp keeps the socket's error as `os_error`
        current = current.__cause__ or current.__context__ or getattr(current, "os_error", None)
    return seen


def sampling_params(endpoint: RemoteEndpoint) -> dict[str, Any]:
    sampling = endpoint.sampling
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}


def top_logprobs_from_openai(content: list[dict[str, Any]] | None,
                             text: str | None = None) -> list[dict[str, Any]] | None:
    """OpenAI-format logprobs -> one entry per generated token (kdist.rows.TOP_LOGPROBS).

    When the server names tokens 'token_id:N' (vLLM with return_tokens_as_token_ids), the
    entry holds the alternatives' ids. Otherwise it holds their strings (`tokens`), the
    generated token's string (`token`) and the character of `text` (the answer) where that
    token starts (`offset`): what logit KD across tokenizers needs to align the teacher's
    tokens with the student's (kdist.train.cross_tokenizer). Ids are left empty then: text
    cannot be mapped back to the teacher's ids.
    """
    if not content:
        return None
    if any(str(alt.get("token", "")).startswith("token_id:")
           for position in content for alt in position.get("top_logprobs") or []):
        return _id_entries(content)
    offsets = _char_offsets([_token_bytes(position) for position in content], text or "")
    return [{"token_ids": [],
             "tokens": [str(alt.get("token", "")) for alt in position.get("top_logprobs") or []],
             "logprobs": [float(alt.get("logprob", 0.0)) for alt in position.get("top_logprobs") or []],
             "token": str(position.get("token", "")), "offset": offset}
            for position, offset in zip(content, offsets)]


def _id_entries(content: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    steps = []
    for position in content:
        ids, values = [], []
        for alternative in position.get("top_logprobs") or []:
            token = str(alternative.get("token", ""))
            if not token.startswith("token_id:"):
                return None  # ids and text mixed: neither can be trusted
            ids.append(int(token.split(":", 1)[1]))
            values.append(float(alternative.get("logprob", 0.0)))
        steps.append({"token_ids": ids, "logprobs": values})
    return steps


def _token_bytes(position: dict[str, Any]) -> bytes:
    """The token's UTF-8 bytes: the `bytes` field where the server sends it (a byte-level
    token may be part of a character, which its string cannot show), else its string."""
    raw = position.get("bytes")
    return bytes(raw) if raw is not None else str(position.get("token", "")).encode()


def _char_offsets(pieces: list[bytes], text: str) -> list[int | None]:
    """Per token, the character of `text` where it starts; None where it starts inside a
    character, and for every token from the first one that does not match `text` on (the
    answer was changed after generation, or the server's tokens do not spell it)."""
    encoded = text.encode()
    char_at = {}  # byte offset of each character's start -> character index
    position = 0
    for index, char in enumerate(text):
        char_at[position] = index
        position += len(char.encode())
    char_at[len(encoded)] = len(text)
    offsets: list[int | None] = []
    position = 0
    for piece in pieces:
        if encoded[position:position + len(piece)] != piece:
            return offsets + [None] * (len(pieces) - len(offsets))
        offsets.append(char_at.get(position))
        position += len(piece)
    return offsets


class RemoteBackend:
    """Base of the HTTP backends; see the module docstring."""

    kind = "remote"

    def __init__(self, endpoint: RemoteEndpoint) -> None:
        self.endpoint = endpoint
        self.name = f"{self.kind}:{endpoint.model}"
        self._policy = RetryPolicy(
            max_attempts=endpoint.max_attempts,
            initial_backoff_s=endpoint.backoff_initial_s,
            max_backoff_s=endpoint.backoff_max_s,
            timeout_s=endpoint.timeout_s,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened: asyncio.Task[None] | None = None
        self._slots: Slots | None = None
        self._limits: RateLimits | None = None
        self._private_loop: asyncio.AbstractEventLoop | None = None
        self._private_thread: threading.Thread | None = None
        self._api_key = api_key_from_env(endpoint)
        self.scrub = Scrubber.for_endpoint(endpoint.endpoint, self._api_key, endpoint.request_extras)
        self.breaker = KeyBreaker(without_credentials(endpoint.endpoint), endpoint.api_key_env)
        self._client: Any = None
        self._credential: Any = None  # an Entra ID credential when there is no key

    # --- subclass hooks -------------------------------------------------------------------

    async def _open(self) -> None:
        """Create the SDK client (inside the loop that will use it)."""

    async def _complete(self, request: ChatRequest) -> ModelResponse:
        raise NotImplementedError

    async def _aclose(self) -> None:
        """Close what `_open` created (shared: both SDKs' clients and credentials have close())."""
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None

    # --- the fan-out ------------------------------------------------------------------------

    async def agenerate(
        self, requests: list[ChatRequest], on_response: Callable[[ModelResponse], None] | None = None
    ) -> list[ModelResponse]:
        """One response per request, in order; `on_response` sees each the moment it is final
        (so a caller can persist it then, rather than with the whole batch)."""

        async def one(request: ChatRequest) -> ModelResponse:
            response = await self.answer(request)
            if on_response is not None:
                on_response(response)
            return response

        rows = [asyncio.ensure_future(one(request)) for request in requests]
        try:
            return list(await asyncio.gather(*rows))
        except BaseException:  # KeyRefused: the rows not yet answered are not sent
            for row in rows:
                row.cancel()
            await asyncio.gather(*rows, return_exceptions=True)
            raise

    async def answer(self, request: ChatRequest, started: asyncio.Event | None = None) -> ModelResponse:
        """The final response to one request; `started` is set when its first attempt goes
        out. Raises KeyRefused once the key was refused KEY_REFUSALS_TO_STOP times in a row."""
        await self._bind_to_running_loop()
        if self.breaker.open:
            raise self.breaker.error()
        response = await self._one(request, started)
        self.breaker.record(error_reason(response.error), response.status)
        if self.breaker.open:
            raise self.breaker.error()
        return response

    async def _bind_to_running_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                raise RuntimeError(f"{self.name}: used from two event loops")
            self._loop = loop
            self._slots = Slots(self.endpoint.concurrency)
            # Limits are for the whole run; each of the `replicas` workers takes its share.
            share = max(self.endpoint.replicas, 1)
            rpm, tpm = self.endpoint.requests_per_minute, self.endpoint.tokens_per_minute
            self._limits = RateLimits(rpm / share if rpm else None, tpm / share if tpm else None)
            # One opening, awaited by every row that starts meanwhile (rows start concurrently).
            self._opened = loop.create_task(self._open())
        await self._opened

    async def _one(self, request: ChatRequest, started: asyncio.Event | None) -> ModelResponse:
        assert self._slots is not None and self._limits is not None
        try:
            response, attempts, seconds = await call_with_retries(
                lambda: self._complete(request),
                policy=self._policy,
                limits=self._limits,
                slots=self._slots,
                estimated_tokens=self._estimated_tokens(request),
                started=started,
            )
        except RequestFailed as failed:
            error = f"{failed.reason}: {failed.detail}" if failed.detail else failed.reason
            return self._error_row(request, self.scrub(error), failed.status, failed.attempts, failed.seconds)
        except KeyRefused:
            raise
        except Exception as unexpected:  # one odd reply must not end the run: it becomes data
            log.warning("%s: row %s failed unexpectedly: %s", self.name, request.id, self.scrub(repr(unexpected)))
            return self._error_row(request, f"unexpected: {type(unexpected).__name__}", None, 1, 0.0)
        finally:
            if started is not None:
                started.set()  # also when it never went out (an error before the first attempt)
        response.attempts, response.seconds = attempts, round(seconds, 4)
        return response

    def _estimated_tokens(self, request: ChatRequest) -> int:
        # About 4 characters a token for the prompt, plus the most the answer may take.
        chars = sum(len(str(message.get("content", ""))) for message in request.messages)
        return chars // 4 + self.endpoint.sampling.max_tokens

    def _error_row(self, request: ChatRequest, error: str, status: int | None, attempts: int, seconds: float) -> ModelResponse:
        return ModelResponse(
            id=request.id, request_hash=request.request_hash, candidate=request.candidate, model=self.name,
            error=error, status=status, attempts=attempts, seconds=round(seconds, 4),
        )  # fmt: skip

    # --- the blocking entry point -----------------------------------------------------------

    def generate(self, requests: list[ChatRequest]) -> list[ModelResponse]:
        return self._run_private(self.agenerate(requests))

    def _run_private(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._private_loop is None:
            self._private_loop = asyncio.new_event_loop()
            self._private_thread = threading.Thread(target=self._private_loop.run_forever, daemon=True)
            self._private_thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._private_loop).result()

    async def aclose(self) -> None:
        if self._loop is not None:
            await self._aclose()
            self._loop = None

    def close(self) -> None:
        if self._private_loop is not None:
            self._run_private(self.aclose())
            self._private_loop.call_soon_threadsafe(self._private_loop.stop)
            if self._private_thread is not None:
                self._private_thread.join(5)
            self._private_loop = None
