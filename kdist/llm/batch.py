"""One batch-inference function for every role a model plays: teacher, judge, evaluated model.

    result = run_inference(requests, endpoint, store_uri, expected_rows=n)

`requests` is a Ray Dataset of (id, candidate, messages) rows (kdist.rows.REQUEST_COLUMNS);
the answers land in the responses store at `store_uri` (kdist.llm.store), one row per
(id, candidate), and `result.responses()` reads them back as a Ray Dataset. Callers map the
answers for their task; nothing here parses them.

What every caller gets:
- Ray Data fan-out: async actors for HTTP endpoints (`concurrency` requests in flight each,
  `replicas` actors), transformers actors for `hf`, `ray.data.llm` engines for `vllm`;
- rate limits, retries that honour Retry-After, and per-row errors (kdist.llm.resilience);
- exact resume: each row's request hash covers (model and its weights, messages, sampling,
  and a sampled request's `sample` index) and is computed in the workers; a rerun asks only
  for hashes without a successful answer, looked up in an Arrow set, so nothing is paid for
  twice; a key whose request was answered under another key gets a copy of that answer;
- answers persisted as they arrive: an HTTP worker streams its rows (kdist.llm.stream: a
  freed slot is refilled at once, no answer waits for its batch-mates) and appends each
  answer to its log the moment it is final (kdist.llm.answer_log); logs become shards, and a
  killed run's logs are recovered by the next one, so a kill -9 re-pays at most the requests
  on the wire. In-process models (hf, vllm) answer a batch at once and write it as a shard;
- shards verified before they are trusted: a corrupt one is set aside with a warning naming
  it, and only its rows are asked again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kdist.endpoints import Endpoint, PriceSection, RemoteEndpoint
from kdist.llm import answer_log, budget
from kdist.llm.base import ChatRequest, ModelResponse, request_hash
from kdist.llm.models import weights_fingerprint
from kdist.llm.remote import error_reason
from kdist.llm.store import HashSet, ResponseStore, new_run_id, response_key
from kdist.rows import REQUEST_COLUMNS, RESPONSE_SCHEMA
from kdist.runtime import SIDE_STAGE_CPUS, SIDE_STAGE_TASKS, cluster_has_gpus

log = logging.getLogger(__name__)

# Ray resources per HTTP actor: remote clients wait on the network.
REMOTE_WORKER_CPUS = 0.25
# Rows hashed per call (each call also records what was asked, one small shard).
HASH_BATCH_ROWS = 4096
# Ray Data runs up to 4 batches of a block at once in an async actor (its default). Two
# blocks run at once per HTTP actor (max_concurrent_calls_per_actor: without it Ray Data runs
# one task at a time per actor), so a call is always there to take over the stream's
# unfinished rows (kdist.llm.stream) and new rows keep coming while a block ends.
BATCHES_PER_BLOCK = 4
TASKS_PER_ACTOR = 2


@dataclass
class InferenceResult:
    summary: dict[str, Any]
    store: ResponseStore

    def responses(self, columns: list[str] | None = None) -> Any:
        """Every answer in the store as a lazy Ray Dataset."""
        return self.store.dataset(columns)


def run_inference(
    requests: Any, endpoint: Endpoint, store_uri: str, *, expected_rows: int, label: str = "answers"
) -> InferenceResult:
    """Answer every request not answered before; see the module docstring."""
    store = ResponseStore(store_uri)
    _trust_only_whole_shards(store, label)
    run_id = new_run_id()
    ledger = budget.ledger_for(endpoint, store)
    todo = _not_yet_answered(requests, endpoint, store, run_id, expected_rows)
    if endpoint.kind == "openai_batch":
        spent = _run_batches(todo, endpoint, store, run_id, ledger)  # type: ignore[arg-type]
    else:
        spent = _run_workers(todo, endpoint, store, run_id, ledger, label, expected_rows)
    # Logs a worker did not compact (one Ray Data stopped early) are this run's answers too.
    answer_log.recover(store)
    copied = store.copy_shared_answers(run_id)
    dropped = store.drop_superseded(run_id)
    summary = summarize(store, run_id, getattr(endpoint, "prices", None))
    summary["duplicates_dropped"] = dropped
    summary["copied"] = copied
    if spent is not None:
        summary["budget"] = {**spent, "not_asked": summary["missing"] if spent["stopped"] else 0}
    return InferenceResult(summary, store)


def _run_workers(
    todo: Any, endpoint: Endpoint, store: ResponseStore, run_id: str, ledger: budget.Ledger | None, label: str, expected_rows: int
) -> dict[str, Any] | None:
    """Ray Data workers answer the rows; with caps, they share one ledger actor."""
    import ray

    shared = budget.shared_ledger(ledger) if ledger is not None and isinstance(endpoint, RemoteEndpoint) else None
    try:
        _drive(_fan_out(todo, endpoint, store.uri, run_id, shared), label, expected_rows)
        return ray.get(shared.state.remote()) if shared is not None else None
    finally:
        if shared is not None:
            ray.kill(shared)


def _run_batches(todo: Any, endpoint: Any, store: ResponseStore, run_id: str, ledger: budget.Ledger | None) -> dict[str, Any] | None:
    """The driver writes the rows into provider batches and waits for them (no workers)."""
    from kdist.llm.openai_batch import BatchOrchestrator

    orchestrator = BatchOrchestrator(endpoint, store, run_id, ledger)
    orchestrator.run(todo.iter_batches(batch_format="pyarrow", batch_size=HASH_BATCH_ROWS))
    return {**ledger.state(), "stopped": orchestrator.budget_stopped} if ledger is not None else None


# --- hashing and resume ------------------------------------------------------------------------


def _trust_only_whole_shards(store: ResponseStore, label: str) -> None:
    """Before the done set is read: a killed run's logged answers become shards, its
    half-written files go, and shards that do not read whole are set aside."""
    if recovered := answer_log.recover(store):
        log.info("%s: recovered %d answers from the logs of an interrupted run", label, recovered)
    if removed := store.remove_temporaries():
        log.info("%s: removed %d half-written shards of an interrupted run", label, removed)
    store.set_aside_corrupt()


def request_identity(endpoint: Endpoint) -> str:
    """What names the model in a request hash: kind:model, plus the weights of a local model
    (a model retrained at the same path is another model and is asked again). A batch of the
    openai kind is the same request: answers of either count for both."""
    if endpoint.kind in ("hf", "vllm"):
        return f"{endpoint.label}@{weights_fingerprint(endpoint.model)}"
    if endpoint.kind == "openai_batch":
        return f"openai:{endpoint.model}"
    return endpoint.label


def hash_settings(endpoint: Endpoint) -> dict[str, Any]:
    """What a request hash covers besides the messages (hash_requests' identity and sampling):
    a change of either asks every row again."""
    return {"identity": request_identity(endpoint), "sampling": endpoint.sampling.model_dump()}


def hash_requests(batch: pa.Table, identity: str, sampling: dict[str, Any]) -> pa.Table:
    """The request columns plus each row's request hash (with its `sample`, when given)."""
    samples = batch["sample"].to_pylist() if "sample" in batch.column_names else [None] * batch.num_rows
    hashes = [
        request_hash(identity, _plain(messages), sampling, sample)
        for messages, sample in zip(batch["messages"].to_pylist(), samples)
    ]
    return batch.select(REQUEST_COLUMNS).append_column("request_hash", pa.array(hashes, pa.string()))


def _hash_and_skip_done(
    batch: pa.Table, identity: str, sampling: dict[str, Any], done: list[Any], store_uri: str, run_id: str
) -> pa.Table:
    """Hash each request, record it as asked by this run, and pass on only those without a
    successful answer. A task, not an actor: Ray reuses a task's worker process, while an actor
    starts a fresh one (about 3.5 s a stage on 2 cores)."""
    hashed = hash_requests(batch, identity, sampling)
    ResponseStore(store_uri).record_requests(hashed, run_id)
    return hashed.filter(pa.array(~_done_hashes(done[0]).contains(hashed["request_hash"])))


@functools.lru_cache(maxsize=1)
def _done_hashes(ref: Any) -> HashSet:
    """The done set, fetched once per worker process (it is one object per run; the ref arrives
    in a list so that Ray passes the ref, not the set, to every task)."""
    import ray

    return ray.get(ref)


def _not_yet_answered(requests: Any, endpoint: Endpoint, store: ResponseStore, run_id: str, expected_rows: int) -> Any:
    import ray

    done = ray.put(store.succeeded_hashes())
    hashed = requests.map_batches(
        _hash_and_skip_done,
        fn_kwargs={**hash_settings(endpoint), "done": [done], "store_uri": store.uri, "run_id": run_id},
        batch_size=HASH_BATCH_ROWS, batch_format="pyarrow", concurrency=SIDE_STAGE_TASKS, num_cpus=SIDE_STAGE_CPUS,
    )  # fmt: skip
    # Blocks small enough that every replica gets some (one block feeds one actor).
    rows = max(1, min(endpoint.batch_size * BATCHES_PER_BLOCK, -(-expected_rows // endpoint.replicas)))
    todo = hashed.repartition(target_num_rows_per_block=rows)
    if _actors_hold_whole_cpus(endpoint):
        # Ray Data starts an actor pool before the tasks that feed it; tasks such as the
        # repartition ask for a whole CPU, and when model actors hold every CPU of a node
        # (2 hf actors on 2 cores) those tasks never run. Computing the requests first (into
        # the object store, which spills to disk) breaks the wait.
        todo = todo.materialize()
    return todo


def _actors_hold_whole_cpus(endpoint: Endpoint) -> bool:
    return not isinstance(endpoint, RemoteEndpoint) and not cluster_has_gpus()


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def chat_requests(batch: pa.Table) -> list[ChatRequest]:
    """Hashed request rows (hash_requests) as the backends' ChatRequests."""
    return [
        ChatRequest(id=row_id, messages=_plain(messages), request_hash=hash_, candidate=candidate or "")
        for row_id, candidate, messages, hash_ in zip(
            batch["id"].to_pylist(), batch["candidate"].to_pylist(),
            batch["messages"].to_pylist(), batch["request_hash"].to_pylist(),
        )
    ]  # fmt: skip


# --- fan-out -----------------------------------------------------------------------------------


def _fan_out(todo: Any, endpoint: Endpoint, store_uri: str, run_id: str, ledger: Any = None) -> Any:
    """The workers for the endpoint's kind; each output row counts what one flush wrote.
    HTTP workers ask only what the budget's `ledger` actor admits (kdist.llm.budget)."""
    from ray.data import ActorPoolStrategy

    sink = {"store_uri": store_uri, "run_id": run_id}
    common = {"batch_size": endpoint.batch_size, "batch_format": "pyarrow"}
    pool = ActorPoolStrategy(size=endpoint.replicas, max_tasks_in_flight_per_actor=TASKS_PER_ACTOR)
    streaming_pool = ActorPoolStrategy(
        size=endpoint.replicas, max_tasks_in_flight_per_actor=TASKS_PER_ACTOR, max_concurrent_calls_per_actor=TASKS_PER_ACTOR
    )
    if endpoint.kind == "vllm":
        from kdist.llm.vllm import VLLMBackend

        return VLLMBackend(endpoint).transform(todo).map_batches(  # type: ignore[arg-type]
            _WriteAnswered, fn_constructor_kwargs=sink, compute=ActorPoolStrategy(size=1), num_cpus=SIDE_STAGE_CPUS, **common
        )
    kwargs = {"endpoint": endpoint, **sink}
    if isinstance(endpoint, RemoteEndpoint):
        kwargs["ledger"] = ledger
        return todo.map_batches(_RemoteWorker, fn_constructor_kwargs=kwargs, compute=streaming_pool, num_cpus=REMOTE_WORKER_CPUS, **common)
    gpus = 1 if cluster_has_gpus() else 0
    return todo.map_batches(_LocalWorker, fn_constructor_kwargs=kwargs, compute=pool, num_cpus=1, num_gpus=gpus, **common)


def _drive(answered: Any, label: str, expected_rows: int) -> None:
    from tqdm import tqdm

    with tqdm(total=expected_rows, desc=label, unit="row", mininterval=2.0) as progress:
        for batch in answered.iter_batches(batch_format="pyarrow", batch_size=None):
            progress.update(pc.sum(batch["rows"]).as_py() or 0)


class _ShardSink:
    """In-process models answer a batch at once: its answers are written as one shard
    (complete or absent) and counted."""

    def __init__(self, store_uri: str, run_id: str) -> None:
        self.store = ResponseStore(store_uri)
        self.run_id = run_id

    def write(self, rows: list[dict[str, Any]]) -> pa.Table:
        if rows:
            self.store.write_shard(pa.Table.from_pylist(rows, schema=RESPONSE_SCHEMA), self.run_id)
        return _counts(len(rows), sum(1 for r in rows if r["error"]))


def _counts(rows: int, errors: int) -> pa.Table:
    return pa.table({"rows": [rows], "errors": [errors]})


class _RemoteWorker:
    """Async Ray Data actor for HTTP endpoints: every batch joins the actor's one stream of
    rows (kdist.llm.stream), which logs each answer the moment it is final."""

    def __init__(self, endpoint: RemoteEndpoint, store_uri: str, run_id: str, ledger: Any = None) -> None:
        from kdist.llm import build_backend
        from kdist.llm.stream import AnswerStream

        self.backend = build_backend(endpoint)
        self.gate = budget.BudgetGate(ledger, endpoint.sampling.max_tokens) if ledger is not None else None
        log_ = answer_log.AnswerLog(ResponseStore(store_uri), run_id)
        self.stream = AnswerStream(self.backend.answer if self.gate is None else self._within_budget, log_)  # type: ignore[attr-defined]

    async def __call__(self, batch: pa.Table) -> pa.Table:
        return _counts(*await self.stream.feed(chat_requests(batch)))

    async def _within_budget(self, request: ChatRequest, started: Any) -> ModelResponse | None:
        """The answer, when the ledger admits the request's worst case; else None (not asked)."""
        assert self.gate is not None
        reserved = await self.gate.admit(request)
        if reserved is None:
            return None
        response = await self.backend.answer(request, started)  # type: ignore[attr-defined]
        await self.gate.settle(reserved, response.prompt_tokens, response.completion_tokens)
        return response


class _LocalWorker:
    """Synchronous Ray Data actor for in-process backends (hf)."""

    def __init__(self, endpoint: Endpoint, store_uri: str, run_id: str) -> None:
        from kdist.llm import build_backend

        self.backend = build_backend(endpoint)
        self.sink = _ShardSink(store_uri, run_id)

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.monotonic()
        responses = self.backend.generate(chat_requests(batch))
        seconds = round(time.monotonic() - start, 4)  # the batch's time is each row's
        for response in responses:
            response.seconds = seconds
        return self.sink.write([response.to_row() for response in responses])


class _WriteAnswered:
    """After the vllm backend's stages: rows already carry the answer fields."""

    def __init__(self, store_uri: str, run_id: str) -> None:
        self.sink = _ShardSink(store_uri, run_id)

    def __call__(self, batch: pa.Table) -> pa.Table:
        fields = [name for name in RESPONSE_SCHEMA.names if name in batch.column_names]
        return self.sink.write(batch.select(fields).to_pylist())


# --- the summary -------------------------------------------------------------------------------


def summarize(store: ResponseStore, run_id: str, prices: PriceSection | None) -> dict[str, Any]:
    """Counts over exactly the keys this run was asked for, from Arrow columns."""
    requested = store.requested(run_id)
    wanted = response_key(requested)
    columns = ["id", "candidate", "error", "attempts", "prompt_tokens", "completion_tokens"]
    totals: Counter[str] = Counter()
    this_run: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    seen = 0
    for path, table in store.read_columns(columns):
        table = table.filter(pc.is_in(response_key(table), value_set=wanted))
        seen += table.num_rows
        totals["done"] += table["error"].null_count
        errors = table["error"].drop_null().to_pylist()
        failed.update(error_reason(error) or "unknown" for error in errors)
        # Copies of an answer given under another key (attempts 0) were neither asked nor paid.
        table = table.filter(pc.not_equal(pc.fill_null(table["attempts"], 1), 0))
        tokens = {name: pc.sum(table[name]).as_py() or 0 for name in ("prompt_tokens", "completion_tokens")}
        totals.update(tokens)
        if f"/part-{run_id}-" in path:
            retried = pc.sum(pc.greater(pc.fill_null(table["attempts"], 1), 1)).as_py() or 0
            this_run.update(requested=table.num_rows, retried=retried, **tokens)
    asked = requested.num_rows
    summary: dict[str, Any] = {
        "requests": asked,
        "done": totals["done"],
        "failed": dict(failed),
        "missing": asked - seen,
        "success_ratio": round(totals["done"] / asked, 4) if asked else 1.0,
        "prompt_tokens": totals["prompt_tokens"],
        "completion_tokens": totals["completion_tokens"],
        "this_run": {key: this_run[key] for key in ("requested", "retried", "prompt_tokens", "completion_tokens")},
    }
    if prices is not None:
        summary["estimated_cost"] = _cost(prices, totals)
        summary["this_run"]["estimated_cost"] = _cost(prices, this_run)
        summary["currency"] = prices.currency
    return summary


def _cost(prices: PriceSection, tokens: Counter[str]) -> float:
    return round(prices.cost(tokens["prompt_tokens"], tokens["completion_tokens"]), 6)


def format_summary(summary: dict[str, Any]) -> str:
    cost = f", est. cost {summary['estimated_cost']} {summary['currency']}" if "estimated_cost" in summary else ""
    run = summary["this_run"]
    return (
        f"{summary['done']}/{summary['requests']} done ({summary['success_ratio']:.1%}), failed {summary['failed'] or 0}; "
        f"this run asked {run['requested']} ({run['retried']} retried); "
        f"tokens in/out {summary['prompt_tokens']}/{summary['completion_tokens']}{cost}"
    )
