"""The remote worker's stream and answer log, without Ray: a stalled row holds only its own
slot (its call returns, the next call's rows take the free slots), the last call waits for
every row, every answer is in the log the moment it is final, a killed worker's log is
recovered (and only once), and one refused key stops every call."""

from __future__ import annotations

import asyncio
import json

from kdist.llm.answer_log import AnswerLog, compact, log_dir, recover
from kdist.llm.base import ChatRequest, ModelResponse
from kdist.llm.resilience import KeyRefused
from kdist.llm.store import ResponseStore, new_run_id
from kdist.llm.stream import AnswerStream


def _requests(prefix: str, count: int) -> list[ChatRequest]:
    return [ChatRequest(id=f"{prefix}{i}", messages=[], request_hash=f"{prefix}{i}".ljust(32, "0")) for i in range(count)]


class FakeEndpoint:
    """`slots` requests at once; a row named in `stalls` is held until its event is set."""

    def __init__(self, slots: int, stalls: dict[str, asyncio.Event] | None = None, refuse: set[str] = frozenset()) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.stalls = stalls or {}
        self.refuse = refuse
        self.sent: list[str] = []

    async def answer(self, request: ChatRequest, started: asyncio.Event) -> ModelResponse:
        async with self.slots:
            started.set()
            self.sent.append(request.id)
            if request.id in self.refuse:
                raise KeyRefused("http://127.0.0.1:1 refused the key in $K")
            if request.id in self.stalls:
                await self.stalls[request.id].wait()
            await asyncio.sleep(0.001)
        return ModelResponse(id=request.id, request_hash=request.request_hash, model="m", response="A", seconds=0.001)


def _stream(tmp_path, endpoint: FakeEndpoint, segment_rows: int = 1000) -> AnswerStream:
    return AnswerStream(endpoint.answer, AnswerLog(ResponseStore(str(tmp_path)), new_run_id(), segment_rows))


def test_a_stalled_row_holds_neither_its_batch_nor_the_slots_of_others(tmp_path):
    async def run():
        release = asyncio.Event()
        endpoint = FakeEndpoint(slots=2, stalls={"a0": release})
        stream = _stream(tmp_path, endpoint)
        first = asyncio.create_task(stream.feed(_requests("a", 4)))
        second = asyncio.create_task(stream.feed(_requests("b", 20)))
        # The batch with the stalled row returns once its rows went out; the other slot
        # serves the next batch meanwhile: all 20 of its rows are answered during the stall.
        counts_first = await asyncio.wait_for(first, 5)
        while len(endpoint.sent) < 24:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not second.done()  # the last call waits for the stalled row
        on_disk = _logged_ids(tmp_path)
        assert len(on_disk) == 23 and "a0" not in on_disk  # each answer logged as it came
        release.set()
        counts_second = await asyncio.wait_for(second, 5)
        return counts_first, counts_second

    (rows_a, _), (rows_b, errors) = asyncio.run(run())
    assert rows_a + rows_b == 24 and errors == 0
    store = ResponseStore(str(tmp_path))
    assert store.read_all(["id"]).num_rows == 24  # idle: compacted into a shard
    assert not list(log_dir(str(tmp_path)).glob("*.jsonl"))


def test_segments_are_compacted_as_they_fill(tmp_path):
    async def run():
        stream = _stream(tmp_path, FakeEndpoint(slots=4), segment_rows=5)
        return await stream.feed(_requests("r", 23))

    assert asyncio.run(run()) == (23, 0)
    store = ResponseStore(str(tmp_path))
    assert len(store.shard_paths()) == 5 and store.read_all(["id"]).num_rows == 23


def test_a_refused_key_stops_every_call(tmp_path):
    async def run():
        endpoint = FakeEndpoint(slots=2, refuse={"a3"})
        stream = _stream(tmp_path, endpoint)
        calls = [asyncio.create_task(stream.feed(_requests(p, 10))) for p in "ab"]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        later = await asyncio.gather(stream.feed(_requests("c", 3)), return_exceptions=True)
        return endpoint, results + later

    endpoint, results = asyncio.run(run())
    assert all(isinstance(r, KeyRefused) for r in results)
    assert len(endpoint.sent) < 8 and not any(sent.startswith("c") for sent in endpoint.sent)


def test_a_killed_workers_log_is_recovered_once_and_a_cut_line_is_skipped(tmp_path):
    store = ResponseStore(str(tmp_path))
    log = AnswerLog(store, new_run_id())
    for request in _requests("k", 3):
        log.append(ModelResponse(id=request.id, request_hash=request.request_hash, model="m", response="B").to_row())
    segment = log.dir / log.file.name
    # What another process sees right after the appends (no close, no fsync): every line.
    assert len(segment.read_text().splitlines()) == 3
    log.file.write('{"id": "k3", "request_')  # the kill came mid-line
    log.file.flush()  # (the process is gone: no close)
    assert recover(store) == 3
    assert sorted(store.read_all(["id"])["id"].to_pylist()) == ["k0", "k1", "k2"]
    assert recover(store) == 0 and not segment.exists()


def test_compacting_a_segment_twice_writes_the_same_shard(tmp_path):
    store = ResponseStore(str(tmp_path))
    log = AnswerLog(store, new_run_id())
    log.append(ModelResponse(id="x", request_hash="x" * 32, model="m", response="C").to_row())
    segment = log.rotate()
    copy = segment.read_text()
    compact(store, segment)
    segment.write_text(copy)  # a crash between the shard's write and the segment's delete
    compact(store, segment)
    assert len(store.shard_paths()) == 1 and store.read_all(["id"]).num_rows == 1


def test_object_storage_spools_on_local_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("KDIST_SPOOL_DIR", str(tmp_path / "spool"))
    one, other = log_dir("s3://bucket/run/responses"), log_dir("s3://bucket/other/responses")
    assert one.parent == tmp_path / "spool" and one != other
    assert log_dir(str(tmp_path / "store")) == tmp_path / "store" / "logs"


def _logged_ids(store_dir) -> set[str]:
    lines = [line for path in log_dir(str(store_dir)).glob("*.jsonl") for line in path.read_text().splitlines()]
    return {json.loads(line)["id"] for line in lines}

