"""The prepare stage: a source -> prompts/ rows (kdist.rows.PROMPT_SCHEMA) for the run's task.

Sources (kdist.data): the procedural demo task; JSONL, CSV and Parquet files, local or on
object storage; Hugging Face datasets; exports of synthetic-data tools; questions from
documents and augmented dialogues, whose rows a writer model writes first (kdist.data.written,
read back as a Parquet source). The task
(kdist.tasks, `data.task`) turns each source row into messages through its column mapping.

Rows stream through Ray Data: workers read the source and build candidate rows into a
temporary table beside prompts/; the driver reads only their key columns to decide
duplicates, sampling and splits (kdist.data.selection); workers then write the chosen rows.
An export's completions become answers of candidate `source` in responses/, so judge,
filter and train read them as they read a teacher's.

Every row is accounted for in the summary: bad rows skipped, rows below an export's
min_score, duplicates removed, rows no split took, and rows of splits no stage uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kdist import dataflow, storage
from kdist.config import FileSource, RunConfig, SyntheticSource
from kdist.data import files, hf, synthetic, written
from kdist.data.candidates import CANDIDATE_SCHEMA, unit_candidates
from kdist.data.selection import KEY_COLUMNS, select
from kdist.errors import UsageError
from kdist.llm.store import ResponseStore, new_run_id
from kdist.runtime import SIDE_STAGE_CPUS
from kdist.rows import PROMPT_SCHEMA, RESPONSE_SCHEMA
from kdist.stages import StageContext
from kdist.tasks import Task, task_for
from kdist.tasks.multiple_choice import MultipleChoice

log = logging.getLogger(__name__)
ROWS_PER_BLOCK = 4096
SOURCE_CANDIDATE = "source"
SOURCE_RUN_PREFIX = "source"


def run(context: StageContext) -> dict[str, Any]:
    config = context.config
    out = context.dir("prepare")
    if isinstance(config.data.source, SyntheticSource):
        summary: dict[str, Any] = {}
        check_splits(config, _synthetic_sizes(config.data.source))
        storage.write_dataset(_synthetic_prompts(config), out, schema=PROMPT_SCHEMA)
    else:
        summary = _prepare_source(context, out)
    per_split = split_counts(out)
    summary = {"rows": sum(per_split.values()), "splits": per_split, **summary, "unused_splits": unused_splits(config, per_split)}
    log.info("prepare: %d prompts %s", summary["rows"], per_split)
    return summary


def split_counts(prompts_uri: str) -> dict[str, int]:
    """Rows per split, from the split column alone."""
    counts = storage.value_counts(prompts_uri, "split")
    return {split: counts[split] for split in sorted(counts, key=str)}


# --- what the run uses ----------------------------------------------------------------------------


def used_splits(config: RunConfig) -> set[str]:
    """The splits some stage reads: the teacher's, the evaluated one, train and validation
    when the source brings its own answers, and the demo teacher's training split."""
    used = {*config.teacher.splits, config.evaluate.split}
    if config.data.source.kind == "synthetic_export":
        used |= {"train", "validation"}
    if config.demo is not None:
        used.add("teacher_train")
    return used


def check_splits(config: RunConfig, per_split: dict[str, int]) -> None:
    """A split the config names for the teacher must have rows: asking for none is a mistake
    (a typo in teacher.splits or in the data), not a run that succeeds with nothing done. The
    default list (train, validation, test) needs only one of its splits to have rows: a plain
    file of rows is all `train`."""
    found = ", ".join(f"{name} {count}" for name, count in sorted(per_split.items())) or "none"
    named = "splits" in config.teacher.model_fields_set
    empty = [split for split in config.teacher.splits if not per_split.get(split)]
    if named and empty:
        raise UsageError(f"teacher.splits names '{empty[0]}', which has no rows in the data (splits found: {found})")
    if config.teacher.splits and len(empty) == len(config.teacher.splits):
        raise UsageError(f"teacher.splits (default {', '.join(config.teacher.splits)}): none of them has rows "
                         f"in the data (splits found: {found}); set teacher.splits")  # fmt: skip


def unused_splits(config: RunConfig, per_split: dict[str, int]) -> dict[str, int]:
    unused = {split: count for split, count in per_split.items() if split not in used_splits(config)}
    if unused:
        log.warning("prepare: rows of splits no stage uses (not in teacher.splits nor evaluate.split): %s", unused)
    return unused


# --- the procedural demo task ---------------------------------------------------------------------


def _synthetic_sizes(source: SyntheticSource) -> dict[str, int]:
    sizes = {"teacher_train": source.teacher_train, "train": source.train,
             "validation": source.validation, "test": source.test}  # fmt: skip
    return {split: size for split, size in sizes.items() if size}


def _synthetic_prompts(config: RunConfig) -> Any:
    """(split, index) rows only: the workers make each question from its (seed, split, index).
    Rows are unique by construction: no selection pass."""
    import ray.data

    parts = [
        ray.data.range(size, override_num_blocks=max(1, size // ROWS_PER_BLOCK)).map_batches(
            _synthetic_rows, fn_kwargs={"split": split, "config": config}, batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS
        )
        for split, size in _synthetic_sizes(config.data.source).items()
    ]  # fmt: skip
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _synthetic_rows(batch: pa.Table, split: str, config: RunConfig) -> pa.Table:
    task = task_for(config.data.task)
    rows = [synthetic_row(task, synthetic.question_at(config.run.seed, split, index), split, index, config.data.system_prompt)
            for index in batch["id"].to_pylist()]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def synthetic_row(task: Task, question: MultipleChoice, split: str, index: int, system_prompt: str | None = None) -> dict[str, Any]:
    """Row `index` of `split` of the demo task, as a prompts/ row (also what tests write)."""
    prompt = task.prompt(question.record(), system_prompt)
    return {"id": f"{split}-{index:06d}", "task": task.name, "messages": prompt.messages,
            "reference": prompt.reference, "split": split, "meta": json.dumps(prompt.meta)}  # fmt: skip


# --- files, Hugging Face datasets and exports -----------------------------------------------------


def _prepare_source(context: StageContext, out: str) -> dict[str, Any]:
    config, generated = context.config, None
    if written.is_written(config.data.source):
        # A model writes the rows first (kdist.data.written); they are then a Parquet source.
        rows_uri, generated = written.write_rows(config.data, context.root)
        rows = FileSource(kind="parquet", path=rows_uri)
        config = config.model_copy(update={"data": config.data.model_copy(update={"source": rows})})
    units, loaded = _plan(config.data.source)
    candidates_uri, decisions_uri = f"{out}.candidates", f"{out}.decisions"
    try:
        _write_candidates(units, loaded, config, candidates_uri)
        selection = select(storage.read_table(candidates_uri, columns=KEY_COLUMNS), config.data, config.run.seed)
        if selection.conflict:
            raise UsageError(_conflict_message(candidates_uri, selection.conflict))
        check_splits(config, _counts_of(selection.decisions["split"]))
        storage.write_table(storage.join(decisions_uri, "part-0.parquet"), selection.decisions)
        _write_prompts(candidates_uri, decisions_uri, task_for(config.data.task).name, out)
        summary = dict(selection.counts) | ({"generated": generated} if generated else {})
        if config.data.source.kind == "synthetic_export":
            summary["source_answers"] = _write_source_answers(candidates_uri, decisions_uri, context.dir("generate"), config.data.source.path)
    finally:
        for temporary in (candidates_uri, decisions_uri):
            storage.remove(temporary)
    _log_accounting(summary)
    return summary


def _plan(source: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if source.kind == "hf":
        loaded = hf.load(source)
        units = hf.plan(loaded)
    else:
        loaded, units = {}, files.plan(source.path, files.file_kind(source.path, getattr(source, "format", None) or _kind(source)))
    return [{**unit, "index": index} for index, unit in enumerate(units)], loaded


def _kind(source: Any) -> str | None:
    return None if source.kind == "synthetic_export" else source.kind


def _write_candidates(units: list[dict[str, Any]], loaded: dict[str, Any], config: RunConfig, uri: str) -> None:
    import ray.data

    candidates = ray.data.from_items(units, override_num_blocks=max(1, len(units))).map_batches(
        unit_candidates, fn_kwargs={"data": config.data, "loaded": loaded}, batch_size=1,
        batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS,
    )  # fmt: skip
    storage.write_dataset(candidates, uri, schema=CANDIDATE_SCHEMA)


def _conflict_message(candidates_uri: str, rowkeys: tuple[int, int]) -> str:
    rows = storage.read_table(candidates_uri, columns=["rowkey", "id", "where"])
    both = rows.filter(pc.is_in(rows["rowkey"], value_set=pa.array(rowkeys, pa.int64()))).sort_by("rowkey").to_pylist()
    return (f"id '{both[0]['id']}' names two different rows: {both[0]['where']} and {both[-1]['where']}; "
            "ids must be unique (exact duplicate rows are removed and counted)")  # fmt: skip


def _counts_of(splits: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(splits).to_pylist() if len(splits) else []
    return {row["values"]: row["counts"] for row in counts}


def _chosen(candidates_uri: str, decisions_uri: str, columns: list[str]) -> Any:
    rows = storage.read_dataset(candidates_uri, columns=["rowkey", *columns])
    return dataflow.join_stored(rows, decisions_uri, ["split"], on=("rowkey",))


def _write_prompts(candidates_uri: str, decisions_uri: str, task: str, out: str) -> None:
    chosen = _chosen(candidates_uri, decisions_uri, ["id", "messages", "reference", "meta"])
    prompts = chosen.map_batches(_prompt_rows, fn_kwargs={"task": task}, batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS)
    storage.write_dataset(prompts, out, schema=PROMPT_SCHEMA)


def _prompt_rows(batch: pa.Table, task: str) -> pa.Table:
    return pa.table({
        "id": batch["id"], "task": pa.array([task] * batch.num_rows, pa.string()), "messages": batch["messages"],
        "reference": batch["reference"], "split": batch["split"], "meta": batch["meta"],
    }, schema=PROMPT_SCHEMA)  # fmt: skip


def _write_source_answers(candidates_uri: str, decisions_uri: str, responses_uri: str, path: str) -> int:
    """The export's completions as answers of candidate `source` (replacing those of an earlier
    prepare), written through the responses store's own shard writer."""
    store = ResponseStore(responses_uri)
    for shard in store.shard_paths():
        name = shard.rsplit("/", 1)[-1]
        if name.startswith(f"part-{SOURCE_RUN_PREFIX}-"):
            storage.remove(storage.join(store.answers_uri, name))
    run_id = f"{SOURCE_RUN_PREFIX}-{new_run_id()}"
    written = _chosen(candidates_uri, decisions_uri, ["id", "messages", "completion"]).map_batches(
        _source_shard, fn_kwargs={"store_uri": responses_uri, "run_id": run_id, "model": f"source:{path}"},
        batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS,
    )  # fmt: skip
    return int(sum(row["rows"] for row in written.take_all()))


def _source_shard(batch: pa.Table, store_uri: str, run_id: str, model: str) -> pa.Table:
    n = batch.num_rows
    if n:
        hashes = [hashlib.sha256(json.dumps([m, c], sort_keys=True).encode()).hexdigest()[:32]
                  for m, c in zip(batch["messages"].to_pylist(), batch["completion"].to_pylist())]  # fmt: skip
        given = {"id": batch["id"], "candidate": pa.array([SOURCE_CANDIDATE] * n, pa.string()),
                 "request_hash": pa.array(hashes, pa.string()), "model": pa.array([model] * n, pa.string()),
                 "response": batch["completion"], "finish_reason": pa.array(["stop"] * n, pa.string()),
                 "attempts": pa.array([0] * n, pa.int64())}  # fmt: skip
        columns = {f.name: given.get(f.name, pa.nulls(n, f.type)) for f in RESPONSE_SCHEMA}
        ResponseStore(store_uri).write_shard(pa.table(columns, schema=RESPONSE_SCHEMA), run_id)
    return pa.table({"rows": pa.array([n], pa.int64())})


def _log_accounting(summary: dict[str, Any]) -> None:
    if summary.get("bad_rows_skipped"):
        log.warning("prepare: %d bad source rows skipped (data.on_bad_row: skip)", summary["bad_rows_skipped"])
    if summary.get("duplicates_removed"):
        log.info("prepare: %d exact duplicate prompts removed", summary["duplicates_removed"])
    overlap = {split: n for split, n in summary.get("overlap_with_train", {}).items() if n}
    if overlap:
        log.warning("prepare: prompts that also appear in train (normalised text): %s", overlap)
