"""Prompt tables written directly (no Ray), for tests of the stages after prepare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kdist.data import synthetic
from kdist.rows import PROMPT_SCHEMA
from kdist.stages.prepare import synthetic_row
from kdist.tasks.multiple_choice import MultipleChoiceTask


def synthetic_prompts(sizes: dict[str, int], seed: int = 0) -> list[dict[str, Any]]:
    task = MultipleChoiceTask()
    return [synthetic_row(task, question, split, index) for split, index, question in synthetic.generate(sizes, seed)]


def write_prompts(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """rows as the prepare stage's output of a run: <run_dir>/prompts/ (one shard)."""
    out = run_dir / "prompts"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA), out / "part-0.parquet")
    return out
