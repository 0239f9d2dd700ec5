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


def _corrupt(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "footer":
        data[-6] ^= 0xFF  # the footer length: the footer cannot be found
    else:  # one flipped byte inside the `response` column's values
        at = data.find(b"the answer of")
        assert at > 0
        data[at + 4] ^= 0x01
    path.write_bytes(bytes(data))


def test_corrupt_shards_are_set_aside_naming_them_and_only_their_rows_go_missing(tmp_path, caplog):
    import logging

    store = ResponseStore(str(tmp_path))
    for name in ("good", "truncated", "footer", "flipped"):
        table = _rows([f"{name}-{i}" for i in range(20)])
        table = table.set_column(table.schema.get_field_index("response"), "response",
                                 pa.array([f"the answer of {name} {i} " * 3 for i in range(20)]))  # fmt: skip
        store.write_shard(table, new_run_id(), tag=name)
    by_tag = {path.rsplit("-", 1)[-1].removesuffix(".parquet"): path for path in store.shard_paths()}
    from pathlib import Path

    for how in ("truncated", "footer", "flipped"):
        _corrupt(Path(by_tag[how]), how)
    with caplog.at_level(logging.WARNING, logger="kdist.llm.store"):
        moved = store.set_aside_corrupt()
    targets = {how: str(tmp_path / "corrupt" / (Path(by_tag[how]).name + ".corrupt")) for how in ("truncated", "footer", "flipped")}
    assert sorted(moved) == sorted(targets.values()) and all(Path(path).is_file() for path in moved)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    for how in ("truncated", "footer", "flipped"):  # each names the shard, what is wrong, and where it went
        assert any(by_tag[how] in w and targets[how] in w and "is corrupt (" in w for w in warnings)
    assert store.shard_paths() == [by_tag["good"]]
    assert sorted(store.read_all(["id"])["id"].to_pylist()) == sorted(f"good-{i}" for i in range(20))
    assert store.set_aside_corrupt() == []


def test_a_shard_that_fails_to_read_names_itself_in_one_line(tmp_path):
    import pytest

    from kdist.errors import UsageError

    store = ResponseStore(str(tmp_path))
    store.write_shard(_rows(["a"]), new_run_id())
    [path] = store.shard_paths()
    with open(path, "r+b") as shard:
        shard.truncate(40)
    with pytest.raises(UsageError) as error:
        store.succeeded_hashes()
    assert path in str(error.value) and "\n" not in str(error.value)


def test_stores_written_before_the_seconds_column_still_read(tmp_path):
    store = ResponseStore(str(tmp_path))
    old = _rows(["a"]).drop_columns(["seconds"])
    (tmp_path / "answers").mkdir()
    pq.write_table(old, tmp_path / "answers" / "part-20200101T000000000000-old.parquet")
    assert store.read_all(["id", "seconds"]).to_pylist() == [{"id": "a", "seconds": None}]
    assert store.set_aside_corrupt() == []


def test_requested_gives_each_keys_candidate_and_hash_and_an_empty_store_has_nothing(tmp_path):
    store = ResponseStore(str(tmp_path))
    run = new_run_id()
    assert store.drop_superseded(run) == 0 and store.requested(run).num_rows == 0
    done = store.succeeded_hashes()
    assert len(done) == 0 and done.contains(pa.array([_hash("a")])).tolist() == [False]
    store.record_requests(_rows(["a"], candidate="student").select(["id", "candidate", "request_hash"]), run)
    assert store.requested(run).to_pylist() == [{"id": "a", "candidate": "student", "request_hash": _hash("a")}]


def test_two_rows_of_one_key_are_one_after_dropping(tmp_path):
    store = ResponseStore(str(tmp_path))
    run = new_run_id()
    store.write_shard(_rows(["a"], error="server_error: 503"), new_run_id())
    store.write_shard(_rows(["a"]), run)
    assert store.drop_superseded(run) == 1
    assert [row["error"] for row in store.read_all().to_pylist()] == [None]


def test_temporaries_of_request_indexes_are_removed_too(tmp_path):
    store = ResponseStore(str(tmp_path))
    run = new_run_id()
    store.record_requests(_rows(["a"]).select(["id", "candidate", "request_hash"]), run)
    requests = tmp_path / "requests"
    (requests / ".part-y.parquet.9.tmp").write_bytes(b"half an index")
    (requests / "notes.tmp").write_bytes(b"not ours")  # only kdist's own temporaries go
    assert store.remove_temporaries() == 1
    assert sorted(p.name for p in requests.iterdir() if not p.name.startswith("part-")) == ["notes.tmp"]
    assert store.requested(run).num_rows == 1
