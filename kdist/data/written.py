"""Sources whose rows a model writes: questions from documents (kdist.data.questions) and
dialogue augmentation (kdist.data.dialogues).

Both run the same flow, through Ray Data and the batch-inference layer (so fan-out, limits,
retries and exact resume come with it, for any endpoint kind):

    source files -> items/      one row per request: a chunk, or a conversation
                 -> answers/    the writer's answers (a responses store, kept across runs:
                                a rerun asks only what it has no answer for)
                 -> rows/       the rows the writer's answers make, in the task's columns

under `<output_dir>/generated/`. prepare then reads rows/ as a Parquet source of the run's
task: duplicates, sampling, splits and the summary's accounting work as for any source.

A kind is a module with: LABEL, DEFAULT_TEMPLATE, VARIABLES (the template's), ITEM_SCHEMA (id, where, bad, ...),
`plan(source)` (read units), `items(unit, source, data)`, `variables(item, source)` (for the
template), `asked(source)` (how many per item), `parse(text, source)`, `records(item, parsed, source, task)`, `row_schema(task)`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa

from kdist import dataflow, storage, templating
from kdist.errors import UsageError
from kdist.rows import REQUEST_SCHEMA
from kdist.runtime import SIDE_STAGE_CPUS

log = logging.getLogger(__name__)
WRITER_CANDIDATE = "writer"
GENERATED_DIR = "generated"
OUTCOMES = ("parsed", "unparsable", "errors", "short", "rows")
# Answers that stopped at the writer's max_tokens (finish_reason `length`): their last item is
# likely cut mid-sentence, and the list may be short. Counted beside the outcomes, not one of them.
CUT = "cut_at_max_tokens"


def kind_module(kind: str) -> ModuleType:
    from kdist.data import dialogues, questions

    return {"document_questions": questions, "dialogue_augmentation": dialogues}[kind]


def is_written(source: Any) -> bool:
    return source.kind in ("document_questions", "dialogue_augmentation")


def write_rows(data: Any, root: str) -> tuple[str, dict[str, Any]]:
    """Items -> the writer's answers -> rows; returns where the rows are and the counts."""
    from kdist.llm.batch import format_summary, run_inference

    source, kind = data.source, kind_module(data.source.kind)
    base = storage.join(root, GENERATED_DIR)
    items_uri, answers_uri, rows_uri = (storage.join(base, name) for name in ("items", "answers", "rows"))
    load_template(source, kind)  # a bad template fails before any request
    _write_items(kind, data, items_uri)
    bad = sum(count for message, count in storage.value_counts(items_uri, "bad").items() if message is not None)
    expected = storage.count_rows(items_uri) - bad
    if expected == 0:
        raise UsageError(f"data.source.path: {source.path} gave nothing for the writer to work on ({kind.LABEL}: 0 items)")
    requests = storage.read_dataset(items_uri).map_batches(
        _requests, fn_kwargs={"kind": kind.__name__, "source": source}, batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS
    )
    log.info("prepare: %d items for the writer %s to write %s from", expected, source.writer.label, kind.LABEL)
    result = run_inference(requests, source.writer, answers_uri, expected_rows=expected, label=kind.LABEL)
    log.info("prepare: writer: %s", format_summary(result.summary))
    answered = dataflow.join_stored(result.store.dataset(["id", "response", "error", "finish_reason"]), items_uri,
                                    kind.ITEM_SCHEMA.names[1:], on=("id",))  # fmt: skip
    answered = answered.map_batches(_rows, fn_kwargs={"kind": kind.__name__, "data": data}, batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS)
    outcomes = _write_and_count(answered, rows_uri, kind.row_schema(_task(data)))
    if not outcomes["rows"]:
        raise UsageError(f"the writer {source.writer.label} gave no {kind.LABEL}: {outcomes['errors']} failed, "
                         f"{outcomes['unparsable']} unparsable answers (raw answers in {answers_uri})")  # fmt: skip
    summary = {"kind": source.kind, "items": expected, "bad_rows_skipped": bad, **outcomes, "inference": result.summary}
    _warn_cut(outcomes, source.writer)
    log.info("prepare: %s", {key: value for key, value in summary.items() if key != "inference"})
    return rows_uri, summary


def load_template(source: Any, kind: ModuleType) -> Any:
    path = Path(source.template).expanduser() if source.template else kind.DEFAULT_TEMPLATE
    return templating.load_file(path, "data.source.template", kind.VARIABLES)


def first_json(text: str) -> Iterator[Any]:
    """Every JSON value that starts at a '[' or '{' of the text and parses, in order: the
    list a model was asked for, even after a chatty lead-in or inside a code fence."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "[{":
            try:
                yield decoder.raw_decode(text, start)[0]
            except json.JSONDecodeError:
                continue


def _task(data: Any) -> Any:
    from kdist.tasks import task_for

    return task_for(data.task)


def _write_items(kind: ModuleType, data: Any, uri: str) -> None:
    import ray.data

    units = kind.plan(data.source)
    items = ray.data.from_items(units, override_num_blocks=max(1, len(units))).map_batches(
        _items, fn_kwargs={"kind": kind.__name__, "data": data}, batch_size=1, batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS
    )
    storage.write_dataset(items, uri, schema=kind.ITEM_SCHEMA)


def _module(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(name)


def _items(units: pa.Table, kind: str, data: Any) -> pa.Table:
    module = _module(kind)
    rows = [item for unit in units.to_pylist() for item in module.items(unit, data.source, data)]
    return pa.Table.from_pylist(rows, schema=module.ITEM_SCHEMA)


def _requests(batch: pa.Table, kind: str, source: Any) -> pa.Table:
    """One request per good item: the template rendered as a single user message."""
    module = _module(kind)
    template = load_template(source, module)
    rows = []
    for item in batch.to_pylist():
        if item["bad"] is None:
            text = template.render(**module.variables(item, source)).strip()
            rows.append({"id": item["id"], "candidate": WRITER_CANDIDATE, "messages": [{"role": "user", "content": text}]})
    return pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)


def _rows(batch: pa.Table, kind: str, data: Any) -> pa.Table:
    """The rows each answer makes (as JSON text, one column: the kinds' schemas differ) and
    what became of the answer."""
    module, task = _module(kind), _task(data)
    out: dict[str, list[Any]] = {"rows": [], "outcome": [], "made": [], "cut": []}
    for item in batch.to_pylist():
        out["cut"].append(not item["error"] and item["finish_reason"] == "length")
        parsed = module.parse(item["response"], data.source) if not item["error"] else []
        made = module.records(item, parsed, data.source, task)
        outcome = "errors" if item["error"] else ("unparsable" if not parsed else "parsed")
        out["rows"].append(json.dumps(made))
        out["outcome"].append(outcome)
        out["made"].append(len(made))
        if outcome == "parsed" and len(parsed) < module.asked(data.source):
            out["outcome"][-1] = "short"
    return pa.table(out)


def _write_and_count(answered: Any, rows_uri: str, schema: pa.Schema) -> dict[str, int]:
    """rows/ written from the answers, and the count of each outcome (one pass: the
    answers are materialized once, in the object store)."""
    answered = answered.materialize()
    records = answered.flat_map(lambda row: json.loads(row["rows"]), num_cpus=SIDE_STAGE_CPUS)
    storage.write_dataset(records.map_batches(lambda b: pa.Table.from_pylist(b.to_pylist(), schema=schema),
                                              batch_format="pyarrow", num_cpus=SIDE_STAGE_CPUS), rows_uri, schema=schema)  # fmt: skip
    counts = {name: 0 for name in (*OUTCOMES, CUT)}
    for batch in answered.select_columns(["outcome", "made", "cut"]).iter_batches(batch_format="pyarrow", batch_size=None):
        for outcome, made, cut in zip(batch["outcome"].to_pylist(), batch["made"].to_pylist(), batch["cut"].to_pylist()):
            counts[outcome] += 1
            counts["rows"] += made
            counts[CUT] += bool(cut)
    counts["parsed"] += counts["short"]
    return counts


def _warn_cut(outcomes: dict[str, int], writer: Any) -> None:
    cut = outcomes[CUT]
    if cut:
        answers = sum(outcomes[name] for name in ("parsed", "unparsable"))
        log.warning("prepare: %d of %d writer answers stopped at data.source.writer.sampling.max_tokens (%d): their last "
                    "item may be cut off; raise it", cut, answers, writer.sampling.max_tokens)  # fmt: skip
