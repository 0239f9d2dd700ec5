"""The responses store: shards complete or absent, one row per (id, candidate) after a rerun,
and the done set looked up without Python objects per row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from kdist.llm.base import request_hash
from kdist.llm.store import HashSet, ResponseStore, new_run_id
from kdist.rows import RESPONSE_SCHEMA


def _hash(text: str) -> str:
    return request_hash("m", [{"role": "user", "content": text}], {})


def _rows(ids, candidate="teacher", error=None, salt=""):
    return pa.Table.from_pylist(
        [{"id": i, "candidate": candidate, "request_hash": _hash(i + salt), "model": "t", "error": error, "attempts": 1}
         for i in ids],
        schema=RESPONSE_SCHEMA,
    )  # fmt: skip


def test_shards_are_renamed_into_place_and_temporaries_are_ignored_and_removed(tmp_path):
    store = ResponseStore(str(tmp_path / "responses"))
    store.write_shard(_rows(["a", "b"]), new_run_id())
    answers = tmp_path / "responses" / "answers"
    (answers / ".part-x.parquet.123.tmp").write_bytes(b"half a parquet")
    assert len(store.shard_paths()) == 1
    assert pq.read_table(answers).num_rows == 2  # readers skip hidden temp files
    assert store.remove_temporaries() == 1
    assert [p.name.startswith("part-") for p in answers.iterdir()] == [True]


def test_succeeded_hashes_skip_error_rows_and_answer_membership_by_batch(tmp_path):
    store = ResponseStore(str(tmp_path))
    store.write_shard(_rows(["a"]), new_run_id())
    store.write_shard(_rows(["b"], error="server_error: 503"), new_run_id())
    done = store.succeeded_hashes()
    assert len(done) == 1
    asked = pa.array([_hash("b"), _hash("a"), _hash("c"), _hash("a")])
    assert done.contains(asked).tolist() == [False, True, False, True]
    assert HashSet.of(pa.array([], pa.string())).contains(asked).tolist() == [False] * 4


def test_two_candidates_of_one_id_are_two_keys(tmp_path):
    store = ResponseStore(str(tmp_path))
    run = new_run_id()
    store.write_shard(_rows(["a"], candidate="base"), run)
    store.write_shard(_rows(["a"], candidate="student"), run)
    assert store.drop_superseded(run) == 0
    assert sorted(store.read_all(["candidate"])["candidate"].to_pylist()) == ["base", "student"]


def test_drop_superseded_keeps_this_runs_row_then_success_then_newest(tmp_path):
    store = ResponseStore(str(tmp_path))
    old_run, new_run = new_run_id(), new_run_id()
    store.write_shard(_rows(["a", "b", "c"], error="content_filter"), old_run)
    store.write_shard(_rows(["d"], salt="stale"), old_run)
    store.write_shard(_rows(["c"]), old_run)  # a later success of the same old run
    store.write_shard(_rows(["a", "d"]), new_run)  # this run answered a and d again
    assert store.drop_superseded(new_run) == 3
    table = store.read_all()
    rows = {row["id"]: row for row in table.to_pylist()}
    assert table.num_rows == 4 == len(rows)
    assert rows["a"]["error"] is None and rows["d"]["request_hash"] == _hash("d")
    assert rows["b"]["error"] == "content_filter" and rows["c"]["error"] is None
    assert store.drop_superseded(new_run) == 0  # idempotent


def test_requested_is_one_row_per_key_of_that_run(tmp_path):
    store = ResponseStore(str(tmp_path))
    run = new_run_id()
    index = _rows(["a", "b"]).select(["id", "candidate", "request_hash"])
    store.record_requests(index, run)
    store.record_requests(index.slice(0, 1), run)  # a retried Ray task recorded a block twice
    store.record_requests(_rows(["z"]).select(["id", "candidate", "request_hash"]), new_run_id())
    assert sorted(store.requested(run)["id"].to_pylist()) == ["a", "b"]


def test_one_id_with_two_different_prompts_is_a_usage_error(tmp_path):
    import pytest

    from kdist.errors import UsageError

    store = ResponseStore(str(tmp_path))
    run = new_run_id()
    store.record_requests(_rows(["a"]).select(["id", "candidate", "request_hash"]), run)
    store.record_requests(_rows(["a"], salt="other text").select(["id", "candidate", "request_hash"]), run)
    with pytest.raises(UsageError, match="id 'a' names 2 different prompts"):
        store.requested(run)
