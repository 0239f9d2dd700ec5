"""The generate stage: the teacher answers every prompt of the configured splits.

prompts/ -> responses/shards/part-*.parquet (kdist.rows.RESPONSE_SCHEMA), fanned out with
Ray Data. Every prompt ends as exactly one row: an answer (parsed for the task, raw text kept)
or an error row with its reason, HTTP status and attempt count; one bad row never ends the run.

Resume is exact and always on: each row's request hash covers (model, messages, sampling), and
a rerun asks only for prompts whose hash has no successful answer yet, so nothing is paid for
twice. Workers write each finished batch as its own shard (complete or absent), so a kill -9
loses at most the batches in flight. At the end, rows superseded by a newer answer for the
same id are dropped, so the output holds one row per id.

Backends: `openai`/`azure` run as async Ray Data actors (a semaphore of `concurrency` requests
per actor, `replicas` actors); `hf` as synchronous actors; `vllm` through ray.data.llm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdist.config import PriceSection, RunConfig, TeacherSection
from kdist.data.tasks import LETTERS, parse_choice
from kdist.errors import StageFailed, UsageError
from kdist.responses_store import ShardStore, filesystem_for, new_run_id
from kdist.rows import RESPONSE_SCHEMA
from kdist.teachers.base import ChatRequest, TeacherResponse, request_hash
from kdist.teachers.remote import error_reason

log = logging.getLogger(__name__)

# Under the stage dir (responses/): the shards, readable as one Parquet dataset.
RESPONSES_FILE = "shards"
SUMMARY_FILE = "summary.json"
REMOTE_KINDS = ("openai", "azure")
# Ray resources per actor: remote clients wait on the network; side stages are light. On a
# 2-core machine, stages asking for a whole CPU each starve one another.
REMOTE_WORKER_CPUS = 0.25
SIDE_STAGE_CPUS = 0.1
PROMPT_COLUMNS = ["id", "task", "messages", "meta", "split"]
# Ray Data runs up to 4 batches of a block at once in an async actor (its default).
BATCHES_PER_BLOCK = 4
TASKS_PER_ACTOR = 2


class GenerationFailed(StageFailed):
    """Too few rows succeeded (below teacher.min_success_ratio); the summary says why."""


def run_generate(config: RunConfig, prompts_path: Path | str, out_dir: Path | str) -> dict[str, Any]:
    section = config.teacher
    check_credentials(section)
    store = ShardStore(_join(out_dir, RESPONSES_FILE))
    if removed := store.remove_temporaries():
        log.info("generate: removed %d half-written shards of an interrupted run", removed)
    prompts = read_prompts(str(prompts_path), section.splits)
    todo = with_request_hashes(prompts, section)
    done = store.succeeded_hashes()
    todo = todo.filter(pc.invert(pc.is_in(todo["request_hash"], value_set=pa.array(sorted(done), pa.string()))))
    log.info(
        "generate: %d prompts in %s, %d already answered, %d to ask %s",
        prompts.num_rows, section.splits, prompts.num_rows - todo.num_rows, todo.num_rows, _teacher_name(section),
    )  # fmt: skip
    run_id = new_run_id()
    if todo.num_rows:
        fan_out(section, todo, store.uri, run_id)
    dropped = store.drop_superseded(run_id)
    summary = summarize(store, prompts["id"], run_id, section.prices)
    summary["duplicates_dropped"] = dropped
    _write_summary(out_dir, summary)
    log.info("generate: %s", format_summary(summary))
    if summary["success_ratio"] < section.min_success_ratio:
        raise GenerationFailed(
            f"generate: only {summary['success_ratio']:.1%} of rows succeeded "
            f"(teacher.min_success_ratio is {section.min_success_ratio:.0%}); failed: {summary['failed']}; "
            "a rerun asks again only for the rows without an answer"
        )
    return summary


def check_credentials(section: TeacherSection) -> None:
    """Fail in one line before any work when the key variable is named but not set (otherwise
    every worker would fail to start, or every row would come back 401)."""
    if section.kind in REMOTE_KINDS and section.api_key_env and not os.environ.get(section.api_key_env):
        raise UsageError(
            f"teacher.api_key_env names {section.api_key_env}, which is not set in this environment "
            "(set it, e.g. from a Kubernetes Secret, or remove api_key_env to use Entra ID on Azure)"
        )


# --- input ---------------------------------------------------------------------------------


def read_prompts(uri: str, splits: list[str]) -> pa.Table:
    fs, path = filesystem_for(uri)
    table = pq.read_table(path, filesystem=fs, columns=PROMPT_COLUMNS)
    table = table.filter(pc.is_in(table["split"], value_set=pa.array(splits)))
    counts = pc.value_counts(table["id"])
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        raise UsageError(f"prompts: id '{repeated[0]['values']}' appears {repeated[0]['counts']} times; ids must be unique")
    return table


def with_request_hashes(prompts: pa.Table, section: TeacherSection) -> pa.Table:
    sampling = section.sampling.model_dump()
    hashes = [request_hash(section.model, _plain(messages), sampling) for messages in prompts["messages"].to_pylist()]
    return prompts.append_column("request_hash", pa.array(hashes, pa.string()))


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# --- fan-out -------------------------------------------------------------------------------


def fan_out(section: TeacherSection, todo: pa.Table, shards_uri: str, run_id: str) -> None:
    """Run the teacher over `todo` on Ray Data; every batch is written as a shard by a worker."""
    import ray
    from ray.data import ActorPoolStrategy
    from tqdm import tqdm

    dataset = ray.data.from_arrow(_blocks(todo, section))
    writer = {"shards_uri": shards_uri, "run_id": run_id}
    common = {"batch_size": section.batch_size, "batch_format": "pyarrow"}
    # Two blocks at a time per actor keep it busy between blocks, and bound what a kill -9
    # can lose: answered-but-unwritten rows are at most the batches in flight.
    pool = ActorPoolStrategy(size=section.replicas, max_tasks_in_flight_per_actor=TASKS_PER_ACTOR)
    if section.kind == "vllm":
        from kdist.teachers.vllm import VLLMTeacher

        answered = VLLMTeacher(section).transform(dataset)
        written = answered.map_batches(
            _WriteAnswered, fn_constructor_kwargs=writer, compute=ActorPoolStrategy(size=1), num_cpus=SIDE_STAGE_CPUS, **common
        )
    elif section.kind in REMOTE_KINDS:
        written = dataset.map_batches(
            _RemoteWorker, fn_constructor_kwargs={"section": section, **writer},
            compute=pool, num_cpus=REMOTE_WORKER_CPUS, **common,
        )  # fmt: skip
    else:
        written = dataset.map_batches(
            _LocalWorker, fn_constructor_kwargs={"section": section, **writer},
            compute=pool, num_cpus=1, **common,
        )  # fmt: skip
    with tqdm(total=todo.num_rows, desc="generate", unit="row", mininterval=2.0) as progress:
        for batch in written.iter_batches(batch_format="pyarrow", batch_size=None):
            progress.update(pc.sum(batch["rows"]).as_py() or 0)


def _blocks(todo: pa.Table, section: TeacherSection) -> list[pa.Table]:
    """Split the work so that every replica gets blocks (one block would feed one actor)."""
    rows = max(1, min(section.batch_size * BATCHES_PER_BLOCK, -(-todo.num_rows // section.replicas)))
    return [todo.slice(start, rows) for start in range(0, todo.num_rows, rows)]


class _ShardWriter:
    """Parse the answers of one batch for its task and write them as one shard."""

    def __init__(self, shards_uri: str, run_id: str) -> None:
        self.store = ShardStore(shards_uri)
        self.run_id = run_id

    def write(self, prompts: pa.Table, responses: list[dict[str, Any]]) -> pa.Table:
        tasks = dict(zip(prompts["id"].to_pylist(), zip(prompts["task"].to_pylist(), prompts["meta"].to_pylist())))
        rows = [with_answer(row, *tasks[row["id"]]) for row in responses]
        self.store.write_shard(pa.Table.from_pylist(rows, schema=RESPONSE_SCHEMA), self.run_id)
        return pa.table({"rows": [len(rows)], "errors": [sum(1 for r in rows if r["error"])]})


def _requests(batch: pa.Table) -> list[ChatRequest]:
    return [
        ChatRequest(id=row_id, messages=_plain(messages), request_hash=hash_)
        for row_id, messages, hash_ in zip(
            batch["id"].to_pylist(), batch["messages"].to_pylist(), batch["request_hash"].to_pylist()
        )
    ]


class _RemoteWorker:
    """Async Ray Data actor: Ray runs several batches at once on its event loop, and the
    backend's semaphore bounds the requests in flight across them."""

    def __init__(self, section: TeacherSection, shards_uri: str, run_id: str) -> None:
        from kdist.teachers import build_teacher

        self.teacher = build_teacher(section)
        self.writer = _ShardWriter(shards_uri, run_id)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        responses = await self.teacher.agenerate(_requests(batch))
        rows = [response.to_row() for response in responses]
        return await asyncio.to_thread(self.writer.write, batch, rows)


class _LocalWorker:
    """Synchronous Ray Data actor for in-process backends (hf)."""

    def __init__(self, section: TeacherSection, shards_uri: str, run_id: str) -> None:
        from kdist.teachers import build_teacher

        self.teacher = build_teacher(section)
        self.writer = _ShardWriter(shards_uri, run_id)

    def __call__(self, batch: pa.Table) -> pa.Table:
        responses: list[TeacherResponse] = self.teacher.generate(_requests(batch))
        return self.writer.write(batch, [response.to_row() for response in responses])


class _WriteAnswered:
    """After the vllm backend's stages: rows already carry the answer fields."""

    def __init__(self, shards_uri: str, run_id: str) -> None:
        self.writer = _ShardWriter(shards_uri, run_id)

    def __call__(self, batch: pa.Table) -> pa.Table:
        fields = [name for name in RESPONSE_SCHEMA.names if name in batch.column_names]
        rows = batch.select(fields).to_pylist()
        return self.writer.write(batch, rows)


def with_answer(row: dict[str, Any], task: str | None, meta: str | None) -> dict[str, Any]:
    """Parse the answer for the row's task; the raw text stays in `response`."""
    row = dict(row)
    if row.get("error"):
        row.update(answer=None, parse_status="error")
        return row
    if task == "multiple_choice":
        choices = json.loads(meta or "{}").get("choices", [])
        answer = parse_choice(row.get("response"), LETTERS[: len(choices) or 5])
        row.update(answer=answer, parse_status="ok" if answer else "unparsable")
    else:
        row.update(answer=None, parse_status="ok")
    return row


# --- the run summary -----------------------------------------------------------------------


def summarize(store: ShardStore, prompt_ids: pa.ChunkedArray, run_id: str, prices: PriceSection | None) -> dict[str, Any]:
    wanted = set(prompt_ids.to_pylist())
    columns = ["id", "error", "parse_status", "attempts", "prompt_tokens", "completion_tokens"]
    failed: Counter[str] = Counter()
    totals = Counter()
    this_run = Counter()
    seen: Counter[str] = Counter()
    for path, table in store.read_columns(columns):
        current = f"/part-{run_id}-" in path
        for row in table.to_pylist():
            if row["id"] not in wanted:
                continue
            seen[row["id"]] += 1
            tokens = {"prompt_tokens": row["prompt_tokens"] or 0, "completion_tokens": row["completion_tokens"] or 0}
            totals.update(tokens)
            if current:
                this_run.update(requested=1, retried=int((row["attempts"] or 1) > 1), **tokens)
            if row["error"]:
                failed[error_reason(row["error"]) or "unknown"] += 1
            else:
                totals["done"] += 1
                totals["unparsable"] += row["parse_status"] == "unparsable"
    summary: dict[str, Any] = {
        "prompts": len(wanted),
        "done": totals["done"],
        "failed": dict(failed),
        "unparsable": totals["unparsable"],
        "missing": len(wanted) - len(seen),
        "duplicates": sum(count - 1 for count in seen.values()),
        "success_ratio": round(totals["done"] / len(wanted), 4) if wanted else 1.0,
        "prompt_tokens": totals["prompt_tokens"],
        "completion_tokens": totals["completion_tokens"],
        "this_run": {key: this_run[key] for key in ("requested", "retried", "prompt_tokens", "completion_tokens")},
    }
    if prices is not None:
        summary["estimated_cost"] = _cost(prices, totals)
        summary["this_run"]["estimated_cost"] = _cost(prices, this_run)
        summary["currency"] = prices.currency
    return summary


def _cost(prices: PriceSection, tokens: Counter) -> float:
    cost = tokens["prompt_tokens"] * prices.input_per_million_tokens + tokens["completion_tokens"] * prices.output_per_million_tokens
    return round(cost / 1e6, 6)


def format_summary(summary: dict[str, Any]) -> str:
    cost = f", est. cost {summary['estimated_cost']} {summary['currency']}" if "estimated_cost" in summary else ""
    run = summary["this_run"]
    return (
        f"{summary['done']}/{summary['prompts']} done ({summary['success_ratio']:.1%}), failed {summary['failed'] or 0}, "
        f"unparsable {summary['unparsable']}; this run asked {run['requested']} ({run['retried']} retried); "
        f"tokens in/out {summary['prompt_tokens']}/{summary['completion_tokens']}{cost}"
    )


def _write_summary(out_dir: Path | str, summary: dict[str, Any]) -> None:
    fs, path = filesystem_for(_join(out_dir, SUMMARY_FILE))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write((json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())


def _join(base: Path | str, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}"


def _teacher_name(section: TeacherSection) -> str:
    return f"with {section.kind}:{section.model}"
