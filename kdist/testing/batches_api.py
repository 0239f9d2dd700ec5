"""The loopback server's Batch API: create, retrieve, list and cancel batches of chat requests.

The routes OpenAI serves under `/v1/batches` and Azure OpenAI under `/openai/batches`. A batch
reads its JSONL input from the files routes (kdist.testing.files_api), is validated (one JSON
object a line with a unique `custom_id`, `method: POST`, the batch's `url` and a body with
`messages`; at most `max_requests` lines), and then moves through its statuses on the clock,
one `phase_s` each, as a real batch does over hours:

    validating -> in_progress (request_counts.completed grows) -> finalizing -> completed

Each request is answered once, by the server's own chat logic (`answer`, which also counts
the request per message content, so tests see that no row was asked twice). On completion the
answers go to an output file and the failed requests to an error file, in the provider's line
format (`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`).
The first `expire_first` batches expire when `expire_done_fraction` of their requests are
done: their output file holds what was done and their error file the rest as
`batch_expired`, as an expired 24-hour window leaves them. A cancelled batch keeps what it had
done the same way. A batch that fails validation ends `failed` with `errors` and no files.

Statuses are computed when a batch is read, so a batch progresses whether or not a client
polls it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kdist.testing.api_common import PREFIXES, error, guarded
from kdist.testing.files_api import FILES, FileStore

# One request of a batch in, (HTTP status, response body) out: the server's chat logic.
Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]
WINDOW_S = 24 * 3600
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchSettings:
    phase_s: float = 0.2  # seconds in each of validating, in_progress, finalizing
    max_requests: int = 50_000  # OpenAI's limit per batch
    expire_first: int = 0  # the first N batches created expire part-way
    expire_done_fraction: float = 0.5


@dataclass
class _Batch:
    obj: dict[str, Any]
    lines: list[dict[str, Any]]
    started: float
    expires: bool
    results: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # one per line done


class BatchQueue:
    """The server's batches; `advance` moves one to where the clock says it is."""

    def __init__(self, settings: BatchSettings, files: FileStore, answer: Answer) -> None:
        self.settings, self.files, self.answer = settings, files, answer
        self.batches: dict[str, _Batch] = {}
        self.created = 0

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        batch_id = "batch_" + uuid.uuid4().hex[:24]
        obj = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"), "status": "validating", "created_at": now,
            "expires_at": now + WINDOW_S, "metadata": body.get("metadata"), "errors": None,
            "output_file_id": None, "error_file_id": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }  # fmt: skip
        lines, problem = self._parse(body)
        if problem:
            obj.update(status="failed", failed_at=now, errors={"object": "list", "data": [problem]})
        else:
            obj["request_counts"]["total"] = len(lines)
        self.created += 1
        expires = self.created <= self.settings.expire_first
        self.batches[batch_id] = _Batch(obj, lines, time.monotonic(), expires)
        return obj

    def _parse(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        stored = self.files.get(str(body.get("input_file_id")))
        if stored is None:
            return [], {"code": "invalid_file", "message": f"No such File object: {body.get('input_file_id')}"}
        lines, seen = [], set()
        for number, text in enumerate(stored.content.decode("utf-8").splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                ok = line["method"] == "POST" and line["url"] == body["endpoint"] and isinstance(line["body"]["messages"], list)
                custom_id = str(line["custom_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok:
                return [], {"code": "invalid_request", "message": "not a request of this batch's endpoint", "line": number}
            if custom_id in seen:
                return [], {"code": "duplicate_custom_id", "message": f"custom_id {custom_id} is repeated", "line": number}
            seen.add(custom_id)
            lines.append(line)
        if len(lines) > self.settings.max_requests:
            return [], {"code": "too_many_requests", "message": f"{len(lines)} requests; a batch may hold {self.settings.max_requests}"}
        return lines, None

    def advance(self, batch: _Batch) -> dict[str, Any]:
        obj = batch.obj
        if obj["status"] in TERMINAL:
            return obj
        phase = self.settings.phase_s
        elapsed = time.monotonic() - batch.started
        if elapsed < phase:
            return obj
        now = int(time.time())
        obj.setdefault("in_progress_at", now)
        obj["status"] = "in_progress"
        total = len(batch.lines)
        due = total if elapsed >= 2 * phase else int(total * (elapsed - phase) / phase)
        if batch.expires:
            due = min(due, int(total * self.settings.expire_done_fraction))
        self._answer_up_to(batch, due)
        if batch.expires and len(batch.results) >= int(total * self.settings.expire_done_fraction) and elapsed >= 2 * phase:
            return self._end(batch, "expired", "batch_expired", "This request could not be executed before the completion window expired.")
        if elapsed >= 2 * phase:
            obj["status"] = "finalizing"
            obj.setdefault("finalizing_at", now)
        if elapsed >= 3 * phase:
            return self._end(batch, "completed")
        return obj

    def cancel(self, batch: _Batch) -> dict[str, Any]:
        self.advance(batch)
        if batch.obj["status"] in TERMINAL:
            return batch.obj
        return self._end(batch, "cancelled", "batch_cancelled", "This request was not executed: the batch was cancelled.")

    def _answer_up_to(self, batch: _Batch, due: int) -> None:
        while len(batch.results) < due:
            batch.results.append(self.answer(batch.lines[len(batch.results)]["body"]))
        counts = batch.obj["request_counts"]
        counts["completed"] = sum(1 for status, _ in batch.results if status == 200)
        counts["failed"] = len(batch.results) - counts["completed"]

    def _end(self, batch: _Batch, status: str, left_code: str = "", left_message: str = "") -> dict[str, Any]:
        """Write the output and error files of what was done (the rest as `left_code`)."""
        obj, now = batch.obj, int(time.time())
        output, errors = [], []
        for line, (code, body) in zip(batch.lines, batch.results):
            entry = {"id": "batch_req_" + uuid.uuid4().hex[:20], "custom_id": line["custom_id"], "error": None,
                     "response": {"status_code": code, "request_id": uuid.uuid4().hex[:16], "body": body}}  # fmt: skip
            (output if code == 200 else errors).append(entry)
        for line in batch.lines[len(batch.results) :]:
            errors.append({"id": "batch_req_" + uuid.uuid4().hex[:20], "custom_id": line["custom_id"], "response": None,
                           "error": {"code": left_code, "message": left_message}})  # fmt: skip
        if output:
            obj["output_file_id"] = self._file(obj["id"], "output", output)
        if errors:
            obj["error_file_id"] = self._file(obj["id"], "error", errors)
        counts = obj["request_counts"]
        counts["failed"] = len(batch.lines) - counts["completed"]
        obj["status"] = status
        obj[f"{status}_at"] = now
        return obj

    def _file(self, batch_id: str, kind: str, entries: list[dict[str, Any]]) -> str:
        content = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in entries).encode()
        return self.files.add(content, f"{batch_id}_{kind}.jsonl", "batch_output").id

    def snapshot(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for batch in self.batches.values():
            statuses[batch.obj["status"]] = statuses.get(batch.obj["status"], 0) + 1
        return {"created": self.created, "by_status": statuses}


def register(app: web.Application, api_key: str | None, settings: BatchSettings, answer: Answer) -> BatchQueue:
    """Add the batches routes (OpenAI and Azure paths) to `app`, which must have the files
    routes already (kdist.testing.files_api.register)."""
    queue = BatchQueue(settings, app[FILES], answer)

    def found(request: web.Request) -> _Batch | web.Response:
        batch_id = request.match_info["batch_id"]
        batch = queue.batches.get(batch_id)
        return batch if batch is not None else error(404, "not_found", f"No batch found with id '{batch_id}'.")

    @guarded(api_key)
    async def create(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not body["endpoint"].endswith("/chat/completions") or not isinstance(body["input_file_id"], str):
                raise ValueError
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return error(400, "invalid_request_error", "input_file_id and endpoint (/v1/chat/completions) are required")
        return web.json_response(queue.create(body))

    @guarded(api_key)
    async def retrieve(request: web.Request) -> web.Response:
        batch = found(request)
        return batch if isinstance(batch, web.Response) else web.json_response(queue.advance(batch))

    @guarded(api_key)
    async def listing(request: web.Request) -> web.Response:
        # Newest first, as the real API lists them.
        data = [queue.advance(batch) for batch in reversed(list(queue.batches.values()))]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    @guarded(api_key)
    async def cancel(request: web.Request) -> web.Response:
        batch = found(request)
        return batch if isinstance(batch, web.Response) else web.json_response(queue.cancel(batch))

    for prefix in PREFIXES:
        app.router.add_post(f"{prefix}/batches", create)
        app.router.add_get(f"{prefix}/batches", listing)
        app.router.add_get(f"{prefix}/batches/{{batch_id}}", retrieve)
        app.router.add_post(f"{prefix}/batches/{{batch_id}}/cancel", cancel)
    return queue
