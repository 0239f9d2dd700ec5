"""Joining a stream with a stored table: the broadcast and the hash-shuffle way give the same
rows (inner join, keys of one or two columns, nested payload columns)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from kdist import dataflow, storage

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.mark.parametrize("broadcast_max_rows", [dataflow.BROADCAST_MAX_ROWS, 0], ids=["broadcast", "hash_shuffle"])
def test_join_stored_both_ways(tmp_path, monkeypatch, broadcast_max_rows):
    import ray.data

    monkeypatch.setattr(dataflow, "BROADCAST_MAX_ROWS", broadcast_max_rows)
    stored = pa.table({
        "id": ["a", "a", "b", "c"], "candidate": ["x", "y", "x", "x"], "score": [1.0, 0.5, 0.0, 0.25],
        "messages": [[{"role": "user", "content": f"m{i}"}] for i in range(4)],
    })  # fmt: skip
    storage.write_table(str(tmp_path / "stored" / "part-0.parquet"), stored)
    stream = ray.data.from_arrow(pa.table({"id": ["c", "a", "z", "a"], "candidate": ["x", "y", "x", "x"], "n": [1, 2, 3, 4]}))
    joined = dataflow.join_stored(stream, str(tmp_path / "stored"), ["score", "messages"], on=("id", "candidate"))
    rows = sorted(joined.take_all(), key=lambda row: row["n"])
    assert [(r["id"], r["candidate"], r["n"], r["score"]) for r in rows] == [("c", "x", 1, 0.25), ("a", "y", 2, 0.5), ("a", "x", 4, 1.0)]
    assert [r["messages"][0]["content"] for r in rows] == ["m3", "m1", "m0"]
