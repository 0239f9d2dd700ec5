"""A fake LLM endpoint on loopback for tests and benchmarks: real HTTP, real sockets.

It speaks, on one port:
- OpenAI chat completions: POST /v1/chat/completions (Authorization: Bearer KEY);
- Azure AI model inference: POST /chat/completions?api-version=... (api-key header), which is
  what `azure.ai.inference.ChatCompletionsClient` sends;
- the Files API under /v1/files and /openai/files (kdist.testing.files_api), which the
  batch and fine-tuning routes read their inputs from and write their results to;
- the Batch API under /v1/batches and /openai/batches (kdist.testing.batches_api).

Faults are chosen deterministically from a hash of the request's messages (and, for transient
faults, the attempt number the server has seen for those messages), so a test knows exactly
which rows fail, how often, and with what. The server counts requests per message content, so
a test can check that a resume did not ask (and pay for) a row twice.

Run it in-process (`LLMServer(...).start()` runs an aiohttp loop in a daemon thread) or as its
own process (`python -m kdist.testing.llm_server --port 0`, it prints its URL), which keeps the
server off the client's core in benchmarks. Stats are served at GET /_kdist/stats either way.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hashlib
import json
import math
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from kdist.testing import batches_api, fine_tuning_api, files_api, scripted
from kdist.testing.api_common import error as _error
from kdist.testing.api_common import presented_key as _presented_key

# Faults that a retry can cure, and faults it cannot (the client must not retry them).
TRANSIENT_FAULTS = ("rate_limit", "server_error", "unavailable", "timeout", "reset", "malformed")
# "not_implemented" is a 501; "echo_key" a 400 whose message repeats the key the client sent
# (as some gateways do), to check that no key reaches the stored error text.
PERMANENT_FAULTS = ("content_filter", "bad_request", "unauthorized", "forbidden", "not_implemented", "echo_key")

# A labelled choice: "A) apple", "(B) pear" or "C. plum", at a line start or after a space.
_CHOICE_LINE = re.compile(r"(?:^|\s)\(?([A-J])[).:]\s+\S", re.MULTILINE)


@dataclass
class FaultPlan:
    """Which rows fail and how; rates are fractions of distinct message contents (rows).

    A row picked for a transient fault fails its first 1..max_consecutive attempts (the number
    is drawn per row), then succeeds; a row picked for a permanent fault fails every attempt.
    """

    transient: dict[str, float] = field(default_factory=dict)
    permanent: dict[str, float] = field(default_factory=dict)
    max_consecutive: int = 2
    # Rows whose answer is well-formed HTTP but not a parsable answer for the task.
    unparsable: float = 0.0
    retry_after_s: float = 0.05  # sent on 429 as Retry-After and retry-after-ms
    # True: a 429 carries Retry-After alone, as an HTTP date (RFC 9110), as some gateways send it.
    retry_after_http_date: bool = False
    hang_s: float = 30.0  # how long a "timeout" fault keeps the request open
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = (set(self.transient) - set(TRANSIENT_FAULTS)) | (
            set(self.permanent) - set(PERMANENT_FAULTS)
        )
        if unknown:
            raise ValueError(
                f"unknown fault kinds {sorted(unknown)}; transient: {TRANSIENT_FAULTS}, "
                f"permanent: {PERMANENT_FAULTS}"
            )
        if sum(self.transient.values()) + sum(self.permanent.values()) > 1.0:
            raise ValueError("fault rates add up to more than 1")

    def fault_for(self, key: str, attempt: int) -> str | None:
        """The fault for the `attempt`-th request (1-based) of the row with this key."""
        draw = _unit(self.seed, key, "row")
        for kind, rate in self.permanent.items():
            if draw < rate:
                return kind
            draw -= rate
        for kind, rate in self.transient.items():
            if draw < rate:
                failing_attempts = 1 + int(_unit(self.seed, key, "n") * self.max_consecutive)
                return kind if attempt <= failing_attempts else None
            draw -= rate
        return None

    def failing_attempts(self, key: str) -> int:
        """How many attempts of this row fail (0: none; a large number: permanent)."""
        attempt = 0
        while self.fault_for(key, attempt + 1) is not None and attempt < 1000:
            attempt += 1
        return attempt


@dataclass
class ServerSettings:
    latency_s: float = 0.0
    faults: FaultPlan = field(default_factory=FaultPlan)
    # When set, requests must carry this key (Bearer token or api-key header), else 401.
    api_key: str | None = None
    # Server-side request budget per rolling minute; above it, 429 with x-ratelimit-* headers.
    requests_per_minute: int | None = None
    model: str = "kdist-test-teacher"
    # Upload limit of the files routes (kdist.testing.files_api); None: no limit.
    max_file_bytes: int | None = None
    # The batches routes' clock, limits and expiries (kdist.testing.batches_api).
    batches: batches_api.BatchSettings = field(default_factory=batches_api.BatchSettings)
    # The fine-tuning jobs' clock and failures (kdist.testing.fine_tuning_api).
    fine_tuning: fine_tuning_api.FineTuningSettings = field(default_factory=fine_tuning_api.FineTuningSettings)
    # Scripted replies, (pattern, reply) rules over the last message (kdist.testing.scripted).
    script: list[Any] = field(default_factory=list)


def message_key(messages: list[dict[str, Any]]) -> str:
    """The key the server counts and picks faults by: a hash of the messages' roles and text."""
    canonical = json.dumps(
        [[m.get("role"), m.get("content")] for m in messages], separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def _unit(seed: int, key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def deterministic_answer(messages: list[dict[str, Any]], unparsable: bool = False) -> str:
    """A multiple-choice prompt gets one of its letters (fixed per prompt); others an echo."""
    if unparsable:
        return "I would rather not say."
    text = str(messages[-1].get("content", "")) if messages else ""
    letters = _CHOICE_LINE.findall(text)
    if letters:
        return letters[int(_unit(0, message_key(messages), "answer") * len(letters))]
    return "ok: " + " ".join(text.split()[:8])


class _State:
    """Counters shared by the handlers (one event loop, so no locks are needed)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()  # message key -> requests received
        self.outcomes: Counter[str] = Counter()  # "ok" or fault kind -> count
        self.in_flight = 0
        self.max_in_flight = 0
        self.window: list[float] = []  # arrival times for the server-side rpm limit
        # Wall-clock times (time.time()) of the first request and the last reply: the span a
        # fan-out kept the endpoint busy, for benchmarks.
        self.first_request_at: float | None = None
        self.last_reply_at: float | None = None
        self.busy_s = 0.0  # summed time requests spent in the handler (the slots' real work)
        # (time.time() of arrival, message key, "ok" or the fault) per chat request, in order.
        self.arrivals: list[tuple[float, str, str]] = []

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "outcomes": dict(self.outcomes),
            "total": sum(self.requests.values()),
            "max_in_flight": self.max_in_flight,
            "first_request_at": self.first_request_at,
            "last_reply_at": self.last_reply_at,
            "busy_s": self.busy_s,
            "arrivals": self.arrivals,
        }


def build_app(settings: ServerSettings) -> web.Application:
    state = _State()
    app = web.Application(client_max_size=8 * 1024 * 1024)

    async def chat(request: web.Request) -> web.StreamResponse:
        azure_style = request.path.rstrip("/") == "/chat/completions"
        if azure_style and "api-version" not in request.query:
            return _error(400, "missing_api_version", "the api-version query parameter is required")
        if settings.api_key and _presented_key(request) != settings.api_key:
            return _error(401, "401", "Access denied due to invalid subscription key.")
        try:
            body = await request.json()
            messages = body["messages"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return _error(400, "invalid_request", "the body must be JSON with 'messages'")
        if isinstance(body.get("model"), str) and not jobs.knows_model(body["model"]):
            return _error(404, "model_not_found", f"The model {body['model']} does not exist.")
        key = message_key(messages)
        state.requests[key] += 1
        state.first_request_at = state.first_request_at or time.time()
        arrived = time.monotonic()
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            limited = _over_rpm(state, settings.requests_per_minute)
            fault = "rate_limit" if limited else settings.faults.fault_for(key, state.requests[key])
            if settings.latency_s:
                await asyncio.sleep(settings.latency_s)
            state.outcomes[fault or "ok"] += 1
            state.arrivals.append((time.time(), key, fault or "ok"))
            if fault:
                return await _fault_response(request, fault, settings)
            unparsable = _unit(settings.faults.seed, key, "unparsable") < settings.faults.unparsable
            return web.json_response(_completion(body, messages, settings.model, unparsable, settings.script, state.requests[key]))
        finally:
            state.in_flight -= 1
            state.last_reply_at = time.time()
            state.busy_s += time.monotonic() - arrived

    def batch_answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One request of a batch: counted like a chat request; a provider retries transient
        failures itself, so only permanent faults reach the batch's error file."""
        messages = body.get("messages") or []
        key = message_key(messages)
        state.requests[key] += 1
        fault = settings.faults.fault_for(key, 1 << 20)
        state.outcomes[fault or "ok"] += 1
        if fault:
            return 400, {"error": {"code": fault, "message": f"request refused: {fault}", "type": "invalid_request_error"}}
        unparsable = _unit(settings.faults.seed, key, "unparsable") < settings.faults.unparsable
        return 200, _completion(body, messages, settings.model, unparsable, settings.script, state.requests[key])

    files = files_api.register(app, settings.api_key, settings.max_file_bytes)
    batches = batches_api.register(app, settings.api_key, settings.batches, batch_answer)
    jobs = fine_tuning_api.register(app, settings.api_key, settings.fine_tuning)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({**state.snapshot(), "files": files.snapshot(), "batches": batches.snapshot(), "fine_tuning": jobs.snapshot()})

    async def reset(_: web.Request) -> web.Response:
        state.requests.clear()
        state.outcomes.clear()
        state.max_in_flight = 0
        state.first_request_at = state.last_reply_at = None
        state.busy_s = 0.0
        state.arrivals.clear()
        return web.json_response({"ok": True})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": settings.model, "object": "model"}]})

    async def info(_: web.Request) -> web.Response:
        return web.json_response(
            {"model_name": settings.model, "model_type": "chat-completion", "model_provider_name": "kdist"}
        )

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/info", info)
    app.router.add_get("/_kdist/stats", stats)
    app.router.add_post("/_kdist/reset", reset)
    return app


def _over_rpm(state: _State, limit: int | None) -> bool:
    if not limit:
        return False
    now = time.monotonic()
    state.window = [t for t in state.window if now - t < 60.0]
    if len(state.window) >= limit:
        return True
    state.window.append(now)
    return False


async def _fault_response(request: web.Request, fault: str, settings: ServerSettings) -> web.StreamResponse:
    plan = settings.faults
    if fault == "rate_limit":
        wait = plan.retry_after_s
        if plan.retry_after_http_date:
            headers = {"Retry-After": email.utils.formatdate(time.time() + wait, usegmt=True)}
            return _error(429, "429", "Rate limit is exceeded. Try again later.", headers)
        headers = {
            "Retry-After": str(max(1, math.ceil(wait))) if wait >= 1 else f"{wait:g}",
            "retry-after-ms": str(int(wait * 1000)),
            "x-ratelimit-limit-requests": str(settings.requests_per_minute or 1000),
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{wait:g}s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": f"{wait:g}s",
        }
        return _error(429, "429", "Rate limit is exceeded. Try again later.", headers)
    if fault == "server_error":
        return _error(500, "internal_error", "The server had an error while processing your request.")
    if fault == "unavailable":
        return _error(503, "service_unavailable", "The service is temporarily unavailable.")
    if fault == "timeout":
        await asyncio.sleep(plan.hang_s)
        return _error(504, "timeout", "gateway timeout")
    if fault == "reset":
        # Drop the TCP connection without an HTTP response: the client sees a reset/EOF.
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError()
    if fault == "malformed":
        return web.Response(status=200, body=b'{"id": "x", "choices": [{"index": 0, "mess', content_type="application/json")
    if fault == "content_filter":
        return web.json_response(
            {
                "error": {
                    "code": "content_filter",
                    "message": "The response was filtered due to the prompt triggering content management policy.",
                    "param": "prompt",
                    "status": 400,
                    "innererror": {"code": "ResponsibleAIPolicyViolation"},
                }
            },
            status=400,
        )
    if fault == "bad_request":
        return _error(400, "invalid_request_error", "This model's maximum context length is exceeded.")
    if fault == "unauthorized":
        return _error(401, "401", "Access denied due to invalid subscription key.")
    if fault == "forbidden":
        return _error(403, "403", "The principal does not have access to this deployment.")
    if fault == "not_implemented":
        return _error(501, "not_implemented", "This route does not support chat completions.")
    if fault == "echo_key":
        key = _presented_key(request) or ""
        return _error(400, "invalid_request_error", f"Bad request from {key} to {request.url}: {'x' * 400}")
    raise ValueError(f"unknown fault {fault}")


def _completion(
    body: dict[str, Any], messages: list[dict[str, Any]], model: str, unparsable: bool, script: list[Any], nth: int = 1
) -> dict[str, Any]:
    answer = scripted.reply(script, messages, nth) or deterministic_answer(messages, unparsable)
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30)
    words = answer.split(" ")
    finish = "length" if len(words) > max_tokens else "stop"
    words = words[:max_tokens]
    answer = " ".join(words)
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": answer},
        "finish_reason": finish,
    }
    if body.get("logprobs"):
        choice["logprobs"] = {"content": _logprobs(words, int(body.get("top_logprobs") or 0), bool(body.get("return_tokens_as_token_ids")))}
    return {
        "id": "chatcmpl-" + message_key(messages)[:12],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        },
    }


def _logprobs(words: list[str], k: int, as_ids: bool) -> list[dict[str, Any]]:
    """Deterministic top-k per generated word: the word itself first, then made-up rivals.
    As text, a token is its word with the space before it (but the first), so that the tokens
    spell the answer as a real server's do."""
    entries = []
    for index, word in enumerate(words):
        base = int(hashlib.sha256(word.encode()).hexdigest()[:6], 16) % 50000
        word = word if index == 0 else " " + word
        tops = [(base + rank * 7, word if rank == 0 else f"{word}~{rank}", -0.1 - rank) for rank in range(max(k, 1))]
        name = (lambda tid, text: f"token_id:{tid}" if as_ids else text)
        entries.append(
            {
                "token": name(tops[0][0], tops[0][1]),
                "logprob": tops[0][2],
                "bytes": None,
                "top_logprobs": [{"token": name(t, s), "logprob": lp, "bytes": None} for t, s, lp in tops[:k]],
            }
        )
    return entries


# --- running it --------------------------------------------------------------------------------


class LLMServer:
    """Start/stop the server in a daemon thread of this process, or in a child process."""

    def __init__(self, settings: ServerSettings | None = None, *, in_subprocess: bool = False) -> None:
        self.settings = settings or ServerSettings()
        self.in_subprocess = in_subprocess
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._process: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    def start(self) -> LLMServer:
        if self.in_subprocess:
            self._start_process()
        else:
            self._start_thread()
        return self

    def _start_thread(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._runner = web.AppRunner(build_app(self.settings), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())  # type: ignore[union-attr]
            self._loop.run_forever()  # type: ignore[union-attr]

        self._thread = threading.Thread(target=run, name="kdist-llm-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("test LLM server did not start in 10 s")

    def _start_process(self) -> None:
        args = [sys.executable, "-m", "kdist.testing.llm_server", "--port", "0", "--settings", json.dumps(asdict(self.settings))]
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline() if self._process.stdout else ""
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not match:
            self._process.kill()
            raise RuntimeError(f"test LLM server process did not start: {line!r}")
        self.port = int(match.group(1))

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop = None

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url + "/_kdist/stats", timeout=10) as reply:
            return json.loads(reply.read())

    def reset(self) -> None:
        request = urllib.request.Request(self.base_url + "/_kdist/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def requests_for(self, messages: list[dict[str, Any]]) -> int:
        return int(self.stats()["requests"].get(message_key(messages), 0))

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def settings_from_json(text: str) -> ServerSettings:
    raw = json.loads(text)
    raw["faults"] = FaultPlan(**raw.get("faults", {}))
    raw["batches"] = batches_api.BatchSettings(**raw.get("batches", {}))
    raw["fine_tuning"] = fine_tuning_api.FineTuningSettings(**raw.get("fine_tuning", {}))
    return ServerSettings(**raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="kdist's fake OpenAI/Azure chat endpoint on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=None, help="seconds per request")
    parser.add_argument("--settings", default="{}", help="ServerSettings as JSON")
    args = parser.parse_args(argv)
    settings = settings_from_json(args.settings)
    if args.latency is not None:
        settings.latency_s = args.latency

    async def serve() -> None:
        runner = web.AppRunner(build_app(settings), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"serving on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
