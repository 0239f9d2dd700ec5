"""The judge stage: score every teacher answer -> judgements/ (kdist.rows.JUDGEMENT_SCHEMA).

`rule` judges offline: an answer scores 1.0 when it parses as a valid answer for the prompt's
task and 0.0 otherwise (error rows and unparsable text). Prompts and answers are joined by id
in Ray Data and scored in the workers: the driver holds neither.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from kdist import dataflow, storage
from kdist.data.tasks import parse_answer
from kdist.llm.store import ResponseStore
from kdist.rows import JUDGEMENT_SCHEMA
from kdist.stages import StageContext

log = logging.getLogger(__name__)

RATIONALE = {
    "ok": "answer parses for the task",
    "unparsable": "answer names no allowed choice",
    "error": "the teacher returned no answer",
}


def run(context: StageContext) -> dict[str, Any]:
    prompts_uri, out = context.dir("prepare"), context.dir("judge")
    answers = ResponseStore(context.dir("generate")).dataset(["id", "candidate", "response", "error"])
    joined = dataflow.join_stored(answers, prompts_uri, ["task", "meta"], on=("id",))
    judged = joined.map_batches(
        rule_judgements, fn_kwargs={"judge": context.config.judge.kind}, batch_format="pyarrow", num_cpus=0.1
    )
    storage.write_dataset(judged, out, schema=JUDGEMENT_SCHEMA)
    scores = storage.value_counts(out, "score")
    passed = sum(count for score, count in scores.items() if score >= context.config.judge.min_score)
    rows = sum(scores.values())
    log.info("judge: %d of %d answers pass", passed, rows)
    return {"rows": rows, "passed": passed}


def rule_judgements(batch: pa.Table, judge: str) -> pa.Table:
    rows = []
    for row in batch.to_pylist():
        status = "error" if row["error"] else ("ok" if parse_answer(row["task"], row["meta"], row["response"]) else "unparsable")
        rows.append({"id": row["id"], "candidate": row["candidate"], "judge": judge,
                     "score": 1.0 if status == "ok" else 0.0, "rationale": RATIONALE[status]})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=JUDGEMENT_SCHEMA)
