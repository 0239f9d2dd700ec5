"""The filter stage: keep the teacher answers the judge passed -> sft/{train,validation}.

Each kept row is the prompt's messages plus the teacher's answer as the assistant turn
(sequence-level KD), with the teacher's top-k logprobs when the generate stage stored them.
Only the `train` and `validation` splits are written: held-out splits never reach training.
Answers, judgements and prompts are joined in Ray Data; the driver holds none of them.
`judge.min_score` is inclusive: a score equal to it is kept.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kdist import dataflow, storage
from kdist.llm.store import ResponseStore
from kdist.rows import JUDGEMENTS_TABLE, SFT_SCHEMA
from kdist.stages import StageContext

log = logging.getLogger(__name__)

SFT_SPLITS = ("train", "validation")


def run(context: StageContext) -> dict[str, Any]:
    prompts_uri, out = context.dir("prepare"), context.dir("filter")
    answers = ResponseStore(context.dir("generate")).dataset(["id", "candidate", "response", "error", "top_logprobs"])
    scores = storage.join(context.dir("judge"), JUDGEMENTS_TABLE)
    judged = dataflow.join_stored(answers, scores, ["score"], on=("id", "candidate"))
    passed = judged.map_batches(
        _passed, fn_kwargs={"min_score": context.config.judge.min_score}, batch_format="pyarrow", num_cpus=0.1
    )
    kept = dataflow.join_stored(passed, prompts_uri, ["messages", "split"], on=("id",)).map_batches(
        _sft_rows, batch_format="pyarrow", num_cpus=0.1
    ).materialize()  # fmt: skip
    counts = {}
    for split in SFT_SPLITS:
        part = kept.map_batches(_only_split, fn_kwargs={"split": split}, batch_format="pyarrow", num_cpus=0.1)
        storage.write_dataset(part, storage.join(out, split), schema=SFT_SCHEMA)
        counts[split] = storage.count_rows(storage.join(out, split))
    answered = storage.count_rows(ResponseStore(context.dir("generate")).answers_uri)
    log.info("filter: kept %s of %d answers", counts, answered)
    return {"kept": counts, "answers": answered}


def _passed(batch: pa.Table, min_score: float) -> pa.Table:
    """Answers with text, no error and a score at or above min_score. A null score (a verdict
    the judge could not give) never passes, not even at min_score 0."""
    answered = pc.and_(pc.is_null(batch["error"]), pc.greater(pc.utf8_length(batch["response"]), 0))
    ok = pc.and_(answered, pc.greater_equal(batch["score"], min_score))  # null (no text, no score): dropped
    return batch.filter(ok, null_selection_behavior="drop").drop_columns(["error", "score"])


def _only_split(batch: pa.Table, split: str) -> pa.Table:
    return batch.filter(pc.equal(batch["split"], split)).select(SFT_SCHEMA.names)


def _sft_rows(batch: pa.Table) -> pa.Table:
    batch = batch.filter(pc.is_in(batch["split"], value_set=pa.array(SFT_SPLITS)))
    rows = [
        {"id": row["id"], "split": row["split"], "top_logprobs": row["top_logprobs"],
         "messages": [*row["messages"], {"role": "assistant", "content": row["response"]}]}
        for row in batch.to_pylist()
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA.append(pa.field("split", pa.string())))
