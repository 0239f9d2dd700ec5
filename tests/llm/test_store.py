"""Shards are complete or absent, and one row per id survives a rerun."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from kdist.responses_store import ShardStore, new_run_id
from kdist.rows import RESPONSE_SCHEMA


def _rows(ids, error=None, hash_prefix="h"):
    return pa.Table.from_pylist(
        [{"id": i, "request_hash": f"{hash_prefix}{i}", "teacher": "t", "error": error, "attempts": 1} for i in ids],
        schema=RESPONSE_SCHEMA,
    )


def test_shards_are_renamed_into_place_and_temporaries_are_ignored_and_removed(tmp_path):
    store = ShardStore(str(tmp_path / "shards"))
    store.write_shard(_rows(["a", "b"]), new_run_id())
    (tmp_path / "shards" / ".part-x.parquet.123.tmp").write_bytes(b"half a parquet")
    assert [p.rsplit("/", 1)[-1].startswith("part-") for p in store.shard_paths()] == [True]
    assert pq.read_table(tmp_path / "shards").num_rows == 2  # readers skip hidden temp files
    assert store.remove_temporaries() == 1
    assert sorted(p.name for p in (tmp_path / "shards").iterdir())[0].startswith("part-")


def test_succeeded_hashes_skip_error_rows(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_shard(_rows(["a"]), new_run_id())
    store.write_shard(_rows(["b"], error="server_error: 503"), new_run_id())
    assert store.succeeded_hashes() == {"ha"}


def test_drop_superseded_keeps_this_runs_row_then_success_then_newest(tmp_path):
    store = ShardStore(str(tmp_path))
    old_run, new_run = new_run_id(), new_run_id()
    store.write_shard(_rows(["a", "b", "c"], error="content_filter"), old_run)
    store.write_shard(_rows(["d"], hash_prefix="stale"), old_run)
    store.write_shard(_rows(["a", "d"]), new_run)  # this run answered a and d again
    assert store.drop_superseded(new_run) == 2
    table = store.read_all()
    rows = {row["id"]: row for row in table.to_pylist()}
    assert table.num_rows == 4 == len(rows)
    assert rows["a"]["error"] is None and rows["d"]["request_hash"] == "hd"
    assert rows["b"]["error"] == "content_filter"
    assert store.drop_superseded(new_run) == 0  # idempotent
