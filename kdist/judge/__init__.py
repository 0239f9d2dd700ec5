"""The judge stage: score every teacher answer -> judgements/ (kdist.rows.JUDGEMENT_SCHEMA).

`rule` judges offline: an answer scores 1.0 when it parses as a valid answer for the task and
0.0 otherwise (error rows and unparsable text). An LLM judge served by vLLM plugs in here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from kdist import io
from kdist.config import RunConfig
from kdist.rows import JUDGEMENT_SCHEMA, RESPONSE_SCHEMA

log = logging.getLogger(__name__)

JUDGEMENTS_FILE = "judgements.parquet"

RATIONALE = {
    "ok": "answer parses for the task",
    "unparsable": "answer names no allowed choice",
    "error": "the teacher returned no answer",
}


def run_judge(config: RunConfig, responses_path: Path, out_dir: Path) -> dict[str, Any]:
    responses = io.read_table(responses_path, schema=RESPONSE_SCHEMA)
    rows = [
        {
            "id": row["id"],
            "judge": config.judge.kind,
            "score": 1.0 if row["parse_status"] == "ok" else 0.0,
            "rationale": RATIONALE.get(row["parse_status"], row["parse_status"]),
        }
        for row in responses.select(["id", "parse_status"]).to_pylist()
    ]
    io.write_table(out_dir / JUDGEMENTS_FILE, pa.Table.from_pylist(rows, schema=JUDGEMENT_SCHEMA))
    passed = sum(row["score"] >= config.judge.min_score for row in rows)
    log.info("judge: %d of %d answers pass", passed, len(rows))
    return {"rows": len(rows), "passed": passed}
