"""The rows reaching training do not depend on the order Ray Data wrote them in."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq

from kdist.rows import SFT_SCHEMA
from kdist.train.loop import _read_rows


def _rows(n: int) -> list[dict]:
    return [{"id": f"q{i:03d}", "top_logprobs": None,
             "messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": "ABCDE"[i % 5]}]} for i in range(n)]


def _write_shards(directory, rows: list[dict], shards: int) -> str:
    directory.mkdir()
    for index in range(shards):
        part = pa.Table.from_pylist(rows[index::shards], schema=SFT_SCHEMA)
        pq.write_table(part, directory / f"part-{index:02d}.parquet")
    return str(directory)


def test_training_rows_are_read_in_id_order_whatever_the_written_order(tmp_path):
    rows = _rows(40)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    in_order = _read_rows(_write_shards(tmp_path / "a", rows, 1))
    other_order = _read_rows(_write_shards(tmp_path / "b", shuffled, 3))
    assert [r["id"] for r in other_order] == sorted(r["id"] for r in rows)
    assert other_order == in_order
