"""The generate stage: the teacher answers every prompt of the configured splits.

prompts/ -> responses/ (kdist.rows.RESPONSE_SCHEMA), fanned out with Ray Data: batches of
prompts flow to teacher actors, each answer is parsed for the task and kept with its raw text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from kdist import io
from kdist.config import RunConfig, TeacherSection
from kdist.data.tasks import LETTERS, parse_choice
from kdist.rows import RESPONSE_SCHEMA
from kdist.runtime import resolve_model
from kdist.teachers.base import ChatRequest, TeacherResponse, request_hash

log = logging.getLogger(__name__)

RESPONSES_FILE = "responses.parquet"


class TeacherWorker:
    """Ray Data actor: builds the teacher once, then answers batches."""

    def __init__(self, section: TeacherSection):
        from kdist.teachers import build_teacher

        self.section = section
        self.teacher = build_teacher(section)
        self.sampling = section.sampling.model_dump()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        requests = [
            ChatRequest(
                row["id"], row["messages"], request_hash(self.section.model, row["messages"], self.sampling)
            )
            for row in rows
        ]
        responses = self.teacher.generate(requests)
        out = [_with_answer(resp, json.loads(row["meta"])) for resp, row in zip(responses, rows)]
        return pa.Table.from_pylist(out, schema=RESPONSE_SCHEMA)


def _with_answer(response: TeacherResponse, meta: dict[str, Any]) -> dict[str, Any]:
    row = response.to_row()
    letters = LETTERS[: len(meta.get("choices", [])) or 5]
    if response.error:
        row.update(answer=None, parse_status="error")
    else:
        answer = parse_choice(response.response, letters)
        row.update(answer=answer, parse_status="ok" if answer else "unparsable")
    return row


def run_generate(config: RunConfig, prompts_path: Path, out_dir: Path) -> dict[str, Any]:
    import ray

    teacher = config.teacher
    prompts = io.read_table(prompts_path)
    wanted = pa.array(teacher.splits)
    prompts = prompts.filter(pa.compute.is_in(prompts["split"], value_set=wanted))
    log.info("generate: %d prompts from splits %s with %s", prompts.num_rows, teacher.splits, teacher.kind)
    dataset = ray.data.from_arrow(prompts).map_batches(
        TeacherWorker,
        fn_constructor_kwargs={
            "section": teacher.model_copy(update={"model": resolve_model(teacher.model)})
        },
        batch_size=teacher.batch_size,
        batch_format="pyarrow",
        concurrency=teacher.replicas,
        num_cpus=1,
    )
    tables = [table.cast(RESPONSE_SCHEMA) for table in ray.get(dataset.to_arrow_refs())]
    responses = pa.concat_tables(tables) if tables else RESPONSE_SCHEMA.empty_table()
    io.write_table(out_dir / RESPONSES_FILE, responses)
    return _summary(responses)


def _summary(responses: pa.Table) -> dict[str, Any]:
    statuses = responses["parse_status"].to_pylist()
    return {
        "rows": responses.num_rows,
        "ok": statuses.count("ok"),
        "unparsable": statuses.count("unparsable"),
        "error": statuses.count("error"),
        "prompt_tokens": sum(responses["prompt_tokens"].to_pylist()),
        "completion_tokens": sum(responses["completion_tokens"].to_pylist()),
    }
