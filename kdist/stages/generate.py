"""The generate stage: the teacher answers every prompt of the configured splits.

prompts/ -> responses/ (a responses store, kdist.llm.store), through the batch-inference layer
(kdist.llm.batch): fan-out, limits, retries, errors as rows and exact resume come from there.
Every prompt ends as one row keyed (id, "teacher"): an answer, or an error row with its
reason; one bad row never ends the run. The answers are stored as given; the judge parses them.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kdist import storage
from kdist.errors import StageFailed
from kdist.llm.batch import format_summary, run_inference
from kdist.stages import StageContext

log = logging.getLogger(__name__)

CANDIDATE = "teacher"
SUMMARY_FILE = "summary.json"


class GenerationFailed(StageFailed):
    """Too few rows succeeded (below teacher.min_success_ratio); the summary says why."""


def run(context: StageContext) -> dict[str, Any]:
    teacher = context.config.teacher
    prompts_uri, out = context.dir("prepare"), context.dir("generate")
    requests, rows = prompt_requests(prompts_uri, teacher.splits, CANDIDATE)
    log.info("generate: %d prompts in %s, to answer with %s", rows, teacher.splits, teacher.label)
    result = run_inference(requests, teacher, out, expected_rows=rows, label="generate")
    summary = result.summary
    storage.write_json(storage.join(out, SUMMARY_FILE), summary)
    log.info("generate: %s", format_summary(summary))
    stopped = budget_stop(summary)
    if stopped:
        log.warning("generate: %s", stopped)
    if summary["success_ratio"] < teacher.min_success_ratio:
        raise GenerationFailed(
            f"generate: only {summary['success_ratio']:.1%} of rows succeeded "
            f"(teacher.min_success_ratio is {teacher.min_success_ratio:.0%}); failed: {summary['failed']}; "
            + (f"{stopped}; " if stopped else "")
            + "a rerun asks again only for the rows without an answer"
        )
    return summary


def budget_stop(summary: dict[str, Any]) -> str | None:
    """What the budget left unasked, in one line, or None when it stopped nothing."""
    spent = summary.get("budget")
    if not spent or not spent["stopped"]:
        return None
    caps = [f"{name} {spent[name]}" for name in ("max_cost", "max_output_tokens") if spent[name] is not None]
    return (
        f"budget reached ({', '.join(caps)}; spent {spent['spent_cost']} and {spent['spent_output_tokens']} output tokens): "
        f"{spent['not_asked']} rows not asked, the answers so far kept (raise the cap and rerun to ask them)"
    )


def prompt_requests(prompts_uri: str, splits: list[str], candidate: str) -> tuple[Any, int]:
    """The prompts of `splits` as batch-inference requests, and how many there are (counted
    from the split column alone, so the driver never reads the messages)."""
    counts = storage.value_counts(prompts_uri, "split")
    rows = sum(counts.get(split, 0) for split in splits)
    prompts = storage.read_dataset(prompts_uri, columns=["id", "messages", "split"])
    requests = prompts.map_batches(
        _as_requests, fn_kwargs={"splits": splits, "candidate": candidate}, batch_format="pyarrow", num_cpus=0.1
    )
    return requests, rows


def _as_requests(batch: pa.Table, splits: list[str], candidate: str) -> pa.Table:
    batch = batch.filter(pc.is_in(batch["split"], value_set=pa.array(splits, pa.string())))
    return pa.table({"id": batch["id"], "candidate": pa.array([candidate] * batch.num_rows, pa.string()),
                     "messages": batch["messages"]})  # fmt: skip
