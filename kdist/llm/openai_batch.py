"""`openai_batch` backend: the OpenAI Batch API and Azure OpenAI batch deployments, run from
the driver (a batch takes up to 24 hours; no Ray actor waits for it).

    BatchOrchestrator(endpoint, store, run_id, ledger).run(todo)

`todo` yields the hashed requests without a successful answer (kdist.llm.batch). They are
written as JSONL chunks (`custom_id` = the request hash, one line per distinct hash), each
within the provider's limits (`batch_max_requests`, `batch_max_bytes`), uploaded, and made a
batch. Everything needed to pick a batch up again lives in the responses store, under
`batches/`: per chunk its input (`<chunk>.jsonl`), its rows (`<chunk>.rows.parquet`: id,
candidate, request_hash) and its record (`<chunk>.json`), rewritten after each step (written,
uploaded, created, then the batch's status) and always before the next one. So:

- a rerun after a crash polls the batches it already created instead of creating new ones,
  and their rows are not asked again meanwhile; a crash between the create call and its
  record is covered too: a chunk's batch carries the chunk's name in its metadata, and an
  uploaded chunk is looked for among the batches before one is created;
- a finished batch's output and error files become one shard of answers (the same rows, the
  same columns as synchronous answers, read by kdist.llm.openai's response_from_completion);
- rows a batch left (expired, cancelled, failed, or a transient error) go into a new batch,
  only those, up to `max_resubmits` times; then they are error rows with their reason;
- the budget (kdist.llm.budget): each line's worst case is reserved before its chunk becomes
  a batch; the first that does not fit closes the last chunk and the rest is not asked.

Polling backs off from `poll_initial_s` to `poll_max_s` (tenacity); API calls are retried by
the openai client itself (`max_attempts`, honouring Retry-After).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tenacity import Retrying, retry_if_result, stop_never, wait_exponential

from kdist import storage
from kdist.endpoints import OpenAIBatchEndpoint
from kdist.llm.base import ChatRequest, ModelResponse
from kdist.llm.budget import Ledger, worst_case_prompt_tokens
from kdist.llm.openai import call_api, request_body, response_from_completion, sync_client
from kdist.llm.remote import api_key_from_env
from kdist.llm.resilience import RequestFailed, failure_for_status
from kdist.llm.scrub import Scrubber
from kdist.llm.store import REQUEST_INDEX_SCHEMA, HashSet, ResponseStore

log = logging.getLogger(__name__)

BATCHES_DIR = "batches"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
METADATA_KEY = "kdist_chunk"


@dataclass
class BatchRecord:
    """One chunk and its batch; `stage` is written, uploaded, created, then the batch's status,
    and `stored` once its answers are in the store."""

    chunk: str
    run_id: str  # the run that wrote it: its answers are stored under that run
    rows: int  # distinct requests (lines)
    worst_prompt_tokens: int  # summed worst cases (kdist.llm.budget), reserved until stored
    max_tokens: int
    attempt: int = 1  # 2, 3...: a resubmission of rows an earlier batch left
    stage: str = "written"
    input_file_id: str | None = None
    batch_id: str | None = None
    resubmitted_as: str | None = None  # the chunk that took the rows this batch left

    @property
    def reservation(self) -> tuple[int, int]:
        return self.worst_prompt_tokens, self.rows * self.max_tokens


class BatchOrchestrator:
    def __init__(self, endpoint: OpenAIBatchEndpoint, store: ResponseStore, run_id: str, ledger: Ledger | None) -> None:
        self.endpoint, self.store, self.run_id, self.ledger = endpoint, store, run_id, ledger
        self.dir = storage.join(store.uri, BATCHES_DIR)
        self.azure = endpoint.api_version is not None
        self.url = "/chat/completions" if self.azure else "/v1/chat/completions"
        # request_extras may hold secrets (the saved config hides them): they are added to
        # each line only on its way up, never written into the output dir.
        self.extras = dict(endpoint.request_extras)
        self.body = {k: v for k, v in request_body(endpoint).items() if k not in self.extras}
        self.name = endpoint.label
        key = api_key_from_env(endpoint)
        self.scrub = Scrubber.for_endpoint(endpoint.endpoint, key, endpoint.request_extras)
        self.client = sync_client(endpoint, key)
        self.sequence = 0
        self.budget_stopped = False

    # --- the whole run ---------------------------------------------------------------------

    def run(self, todo: Iterable[pa.Table]) -> dict[str, Any]:
        """Pick up earlier batches, submit what `todo` still needs, wait for every batch."""
        pending = [record for record in self._records() if record.stage != "stored"]
        if pending:
            log.info("batch: %d batches of an earlier run picked up (polled, not created again)", len(pending))
        for record in pending:
            if self.ledger is not None:  # already paid for, whatever the cap says now
                self.ledger.reserve(*record.reservation, force=True)
            self._submit(record)
        skip = HashSet.of(pa.concat_arrays([self._rows(r)["request_hash"].combine_chunks() for r in pending] or [pa.array([], pa.string())]))
        for chunk in self._chunks(todo, skip):
            pending.append(self._submit(chunk))
        self._wait(pending)
        return {"batches": len(self._records()), "budget_stopped": self.budget_stopped}

    # --- chunks ----------------------------------------------------------------------------

    def _chunks(self, todo: Iterable[pa.Table], skip: HashSet) -> Iterator[BatchRecord]:
        """The requests as chunks within the limits (and the budget), each written down."""
        lines: list[bytes] = []
        rows: list[pa.Table] = []
        seen: set[str] = set()
        size = worst = 0
        for table in todo:
            table = table.filter(pa.array(~skip.contains(table["request_hash"])))
            for index, (hash_, messages) in enumerate(zip(table["request_hash"].to_pylist(), table["messages"].to_pylist())):
                if hash_ in seen:  # the same request for another row: asked once, answers both
                    rows.append(table.slice(index, 1))
                    continue
                line = self._line(hash_, messages)
                if lines and (len(lines) >= self.endpoint.batch_max_requests or size + len(line) > self.endpoint.batch_max_bytes):
                    yield self._write(lines, rows, worst)
                    lines, rows, seen, size, worst = [], [], set(), 0, 0
                prompt_worst = worst_case_prompt_tokens(messages)
                if self.ledger is not None and not self.ledger.reserve(prompt_worst, self.endpoint.sampling.max_tokens):
                    self.budget_stopped = True
                    break
                lines.append(line)
                rows.append(table.slice(index, 1))
                seen.add(hash_)
                size, worst = size + len(line), worst + prompt_worst
            if self.budget_stopped:
                break
        if lines:
            yield self._write(lines, rows, worst)

    def _line(self, request_hash: str, messages: list[dict[str, Any]]) -> bytes:
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        return self._encode({"custom_id": request_hash, "method": "POST", "url": self.url, "body": {**self.body, "messages": plain}})

    def _write(self, lines: list[bytes], rows: list[pa.Table], worst: int, attempt: int = 1) -> BatchRecord:
        self.sequence += 1
        chunk = f"{self.run_id}-{self.sequence:05d}"
        index = pa.concat_tables(rows).select(REQUEST_INDEX_SCHEMA.names).cast(REQUEST_INDEX_SCHEMA)
        storage.write_bytes(self._path(chunk, ".jsonl"), b"".join(lines))
        storage.write_table(self._path(chunk, ".rows.parquet"), index)
        record = BatchRecord(chunk, self.run_id, len(lines), worst, self.endpoint.sampling.max_tokens, attempt)
        self._save(record)
        return record

    # --- one batch: upload, create, poll, store --------------------------------------------

    def _submit(self, record: BatchRecord) -> BatchRecord:
        if record.stage == "written":
            content = self._with_extras(storage.read_text(self._path(record.chunk, ".jsonl")).encode())
            uploaded = self._call(lambda: self.client.files.create(file=(f"{record.chunk}.jsonl", content), purpose="batch"))
            record.input_file_id, record.stage = uploaded.id, "uploaded"
            self._save(record)
        if record.stage == "uploaded":
            batch = self._created_before(record) or self._call(lambda: self.client.batches.create(
                input_file_id=record.input_file_id, endpoint=self.url, completion_window="24h",
                metadata={METADATA_KEY: record.chunk},
            ))  # fmt: skip
            record.batch_id, record.stage = batch.id, batch.status
            self._save(record)
            log.info("batch %s: %d requests, %s", batch.id, record.rows, batch.status)
        return record

    def _with_extras(self, content: bytes) -> bytes:
        if not self.extras:
            return content
        lines = [json.loads(line) for line in content.splitlines() if line.strip()]
        return b"".join(self._encode({**line, "body": {**line["body"], **self.extras}}) for line in lines)

    @staticmethod
    def _encode(line: dict[str, Any]) -> bytes:
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    def _created_before(self, record: BatchRecord) -> Any:
        """The batch a crash kept from being recorded (found by the chunk in its metadata)."""
        for batch in self._call(lambda: self.client.batches.list(limit=100)):
            if (batch.metadata or {}).get(METADATA_KEY) == record.chunk:
                return batch
        return None

    def _wait(self, records: list[BatchRecord]) -> None:
        waiting = [r for r in records if r.stage != "stored"]
        poll = Retrying(
            retry=retry_if_result(bool), stop=stop_never, reraise=True,
            wait=wait_exponential(multiplier=self.endpoint.poll_initial_s, max=self.endpoint.poll_max_s),
        )  # fmt: skip
        poll(self._poll_once, waiting)

    def _poll_once(self, waiting: list[BatchRecord]) -> list[BatchRecord]:
        """Poll every waiting batch once; store the finished ones (and queue their resubmits).
        Returns what still waits (tenacity polls again while it is not empty)."""
        for record in list(waiting):
            batch = self._call(lambda: self.client.batches.retrieve(record.batch_id))
            if batch.status != record.stage:
                record.stage = batch.status
                self._save(record)
            if batch.status in TERMINAL:
                waiting.remove(record)
                if again := self._store(record, batch):
                    waiting.append(self._submit(again))
        return waiting

    def _store(self, record: BatchRecord, batch: Any) -> BatchRecord | None:
        """The batch's answers as one shard; the rows it left, as the next chunk (or None)."""
        rows = self._rows(record)
        by_hash = {h: i for i, h in enumerate(rows["request_hash"].to_pylist())}
        results: dict[str, ModelResponse] = {}
        seconds = float((batch.completed_at or batch.expired_at or batch.failed_at or batch.cancelled_at or time.time()) - batch.created_at)
        for entry in itertools.chain(self._download(batch.output_file_id), self._download(batch.error_file_id)):
            custom_id = entry.get("custom_id")
            if custom_id in by_hash and (response := self._answer(entry, custom_id, record, seconds)) is not None:
                results[custom_id] = response
        left = [h for h in dict.fromkeys(rows["request_hash"].to_pylist()) if h not in results]
        again = None
        if left and record.attempt <= self.endpoint.max_resubmits:
            # Rows the budget refuses get no row at all: not asked, like synchronous ones.
            if record.resubmitted_as is None:
                again = self._resubmission(record, set(left))
                record.resubmitted_as = again.chunk if again else ""
                self._save(record)  # before the answers: a crash now never resubmits twice
        else:
            for hash_ in left:
                results[hash_] = self._left_behind(hash_, batch, record.attempt)
        self._write_answers(record, rows, results, batch.id)
        if self.ledger is not None:
            answered = [r for r in results.values() if r.error is None]
            self.ledger.settle(record.reservation, sum(r.prompt_tokens for r in answered), sum(r.completion_tokens for r in answered))
        record.stage = "stored"
        self._save(record)
        counts = batch.request_counts
        log.info("batch %s %s: %s of %s answered; %d resubmitted", batch.id, batch.status,
                 counts.completed if counts else "?", record.rows, again.rows if again else 0)  # fmt: skip
        return again

    def _answer(self, entry: dict[str, Any], hash_: str, record: BatchRecord, seconds: float) -> ModelResponse | None:
        """One line of an output or error file as a response; None when the row should go
        into the next batch (not run, or a transient failure)."""
        request = ChatRequest(id="", messages=[], request_hash=hash_)
        reply = entry.get("response") or {}
        status = int(reply.get("status_code") or 0)
        try:
            if status == 200:
                response = response_from_completion(reply.get("body") or {}, request, self.name, status)
                response.attempts, response.seconds = record.attempt, seconds
                return response
            if not status:
                return None  # expired or cancelled before it ran
            error = (reply.get("body") or {}).get("error") or {}
            raise failure_for_status(status, error.get("code"), None, str(error.get("message") or ""))
        except RequestFailed as failed:
            if failed.transient:
                return None
            text = f"{failed.reason}: {failed.detail}" if failed.detail else failed.reason
            return ModelResponse(id="", request_hash=hash_, model=self.name, error=self.scrub(text), status=failed.status or status, attempts=record.attempt)

    def _left_behind(self, hash_: str, batch: Any, attempts: int) -> ModelResponse:
        errors = getattr(batch.errors, "data", None) or []
        why = f" ({self.scrub(str(errors[0].message))[:120]})" if errors else ""
        error = f"batch_{batch.status}: not answered in {attempts} batches{why}"
        return ModelResponse(id="", request_hash=hash_, model=self.name, error=error, attempts=attempts)

    def _resubmission(self, record: BatchRecord, left: set[str]) -> BatchRecord | None:
        """A new chunk of the lines of `left` (under the budget), or None."""
        lines, worst = [], 0
        for line in storage.read_text(self._path(record.chunk, ".jsonl")).encode().splitlines(keepends=True):
            parsed = json.loads(line)
            if parsed["custom_id"] not in left:
                continue
            prompt_worst = worst_case_prompt_tokens(parsed["body"]["messages"])
            if self.ledger is not None and not self.ledger.reserve(prompt_worst, record.max_tokens):
                self.budget_stopped = True
                break
            lines.append(line)
            worst += prompt_worst
        if not lines:
            return None
        rows = self._rows(record)
        kept = {json.loads(line)["custom_id"] for line in lines}
        rows = rows.filter(pc.is_in(rows["request_hash"], value_set=pa.array(sorted(kept), pa.string())))
        return self._write(lines, [rows], worst, attempt=record.attempt + 1)

    def _write_answers(self, record: BatchRecord, rows: pa.Table, results: dict[str, ModelResponse], batch_id: str) -> None:
        out = []
        for row_id, candidate, hash_ in zip(rows["id"].to_pylist(), rows["candidate"].to_pylist(), rows["request_hash"].to_pylist()):
            if (response := results.get(hash_)) is not None:
                out.append({**response.to_row(), "id": row_id, "candidate": candidate})
        if out:
            from kdist.rows import RESPONSE_SCHEMA

            # Named after the batch: storing it again (a crash before the record) replaces it.
            self.store.write_shard(pa.Table.from_pylist(out, schema=RESPONSE_SCHEMA), record.run_id, tag=batch_id)

    # --- plumbing --------------------------------------------------------------------------

    def _download(self, file_id: str | None) -> Iterator[dict[str, Any]]:
        """A result file's lines as they stream in (a 200 MB file is never held whole)."""
        if not file_id:
            return
        with contextlib.ExitStack() as stack:  # the request goes out on entering: inside _call
            reply = self._call(lambda: stack.enter_context(self.client.files.with_streaming_response.content(file_id)))
            for line in reply.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def _call(self, call: Any) -> Any:
        """An API call; a failure ends the stage in one line (the batches' records stay: a
        rerun picks them up)."""
        return call_api(call, "batch API", self.endpoint.endpoint, self.scrub)

    def _path(self, chunk: str, suffix: str) -> str:
        return storage.join(self.dir, chunk + suffix)

    def _save(self, record: BatchRecord) -> None:
        storage.write_json(self._path(record.chunk, ".json"), asdict(record))

    def _records(self) -> list[BatchRecord]:
        paths = storage.list_files(self.dir, suffix=".json")
        return [BatchRecord(**storage.read_json(storage.join(self.dir, p.rsplit("/", 1)[-1]))) for p in paths]

    def _rows(self, record: BatchRecord) -> pa.Table:
        return storage.read_table(self._path(record.chunk, ".rows.parquet"), schema=REQUEST_INDEX_SCHEMA)
