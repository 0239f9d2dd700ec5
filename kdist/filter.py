"""The filter stage: keep the teacher answers the judge passed -> sft/{train,validation}.

Each kept row is the prompt's messages plus the teacher's answer as the assistant turn
(sequence-level KD), with the teacher's top-k logprobs when the generate stage stored them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from kdist import io
from kdist.config import RunConfig
from kdist.rows import JUDGEMENT_SCHEMA, PROMPT_SCHEMA, RESPONSE_SCHEMA, SFT_SCHEMA

log = logging.getLogger(__name__)

SFT_SPLITS = ("train", "validation")


def run_filter(
    config: RunConfig, prompts_path: Path, responses_path: Path, judgements_path: Path, out_dir: Path
) -> dict[str, Any]:
    prompts = {r["id"]: r for r in io.read_table(prompts_path, schema=PROMPT_SCHEMA).to_pylist()}
    responses = io.read_table(responses_path, schema=RESPONSE_SCHEMA).to_pylist()
    scores = {
        r["id"]: r["score"]
        for r in io.read_table(judgements_path, schema=JUDGEMENT_SCHEMA).to_pylist()
    }
    kept: dict[str, list[dict[str, Any]]] = {split: [] for split in SFT_SPLITS}
    for response in responses:
        prompt = prompts.get(response["id"])
        if prompt is None or scores.get(response["id"], 0.0) < config.judge.min_score:
            continue
        if prompt["split"] not in kept:
            continue
        answer = {"role": "assistant", "content": response["response"]}
        kept[prompt["split"]].append(
            {
                "id": response["id"],
                "messages": [*prompt["messages"], answer],
                "top_logprobs": response["top_logprobs"],
            }
        )
    for split, rows in kept.items():
        io.write_table(out_dir / f"{split}.parquet", pa.Table.from_pylist(rows, schema=SFT_SCHEMA))
    counts = {split: len(rows) for split, rows in kept.items()}
    log.info("filter: kept %s of %d answers", counts, len(responses))
    return {"kept": counts, "answers": len(responses)}
