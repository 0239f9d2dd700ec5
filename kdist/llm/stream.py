"""One remote worker's rows as one stream: a slot freed by an answer is refilled at once, and
no answer waits for its batch-mates.

Ray Data hands an actor batches, and a Ray Data task (a block of batches) is done only when
every call on it has returned; a call that awaited all its rows would hold its block for as
long as its slowest row (a 30 s stall), and with it the actor's share of the input. So a call
here returns as soon as each of its rows has gone out: the rows go on in the background,
`concurrency` on the wire at once (the backend's slots), and Ray Data hands over the next
batch, whose rows queue for the next free slot. Every answer is appended to the worker's log
the moment it is final (kdist.llm.answer_log), so nothing depends on a call being alive.

The one rule that keeps this correct: while rows are unfinished, some call stays. A call that
would leave the actor without callers waits until the next call arrives (Ray Data sends one
while any input is left: `max_concurrent_calls_per_actor` >= 2) or until the last row is
final; so when Ray Data sees the actor's last call return, every answer is logged, and the
log is compacted into a shard.

A KeyRefused (or any bug) in one row stops the stream: the other rows are cancelled, and every
call, current and next, raises it, which fails the stage with that one line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from kdist.llm.answer_log import AnswerLog, compact
from kdist.llm.base import ChatRequest, ModelResponse

# None: the row was not asked (the budget's; kdist.llm.budget), so nothing is logged for it.
Answer = Callable[[ChatRequest, asyncio.Event], Awaitable[ModelResponse | None]]


class AnswerStream:
    def __init__(self, answer: Answer, log: AnswerLog) -> None:
        self.answer, self.log = answer, log
        self.unfinished: set[asyncio.Task[None]] = set()
        self.compactions: set[asyncio.Task[int]] = set()
        self.callers = 0
        self.failure: BaseException | None = None
        self._changed = asyncio.Event()
        self._logged = [0, 0]  # answers and error rows logged since the last report

    async def feed(self, requests: list[ChatRequest]) -> tuple[int, int]:
        """Start `requests`; return once each has gone out and, if this is the only call, every
        row of the worker is final. Returns (answers, errors) logged since the last report, by
        any call: the counts add up to every row once."""
        self.callers += 1
        try:
            for started in [self._start(request) for request in requests]:
                await started.wait()
            await self._until(lambda: self.callers > 1 or not self.unfinished)
        finally:
            self.callers -= 1
            self._poke()
        if not self.callers and not self.unfinished:
            await self._compact_all()  # idle: nothing logged waits for its shard
        self._raise_failure()
        return self._report()

    # --- rows ------------------------------------------------------------------------------

    def _start(self, request: ChatRequest) -> asyncio.Event:
        started = asyncio.Event()
        self._raise_failure()
        self.unfinished.add(asyncio.create_task(self._row(request, started)))
        return started

    async def _row(self, request: ChatRequest, started: asyncio.Event) -> None:
        try:
            response = await self.answer(request, started)
            if response is not None:
                self._append(response)
        except asyncio.CancelledError:
            pass  # stopped by another row's failure
        except BaseException as err:  # noqa: BLE001 - KeyRefused, or a bug: the stage stops
            self._fail(err)
        finally:
            started.set()
            self.unfinished.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._poke()

    def _append(self, response: ModelResponse) -> None:
        self.log.append(response.to_row())
        self._logged[0] += 1
        self._logged[1] += response.error is not None
        if self.log.due():
            self._compact(self.log.rotate())

    def _fail(self, err: BaseException) -> None:
        if self.failure is None:
            self.failure = err
            for task in self.unfinished:
                if task is not asyncio.current_task():
                    task.cancel()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _report(self) -> tuple[int, int]:
        counts = (self._logged[0], self._logged[1])
        self._logged = [0, 0]
        return counts

    # --- compaction ------------------------------------------------------------------------

    def _compact(self, segment: Path | None) -> None:
        """Compact a closed segment off the event loop (answers keep arriving meanwhile)."""
        if segment is not None:
            task = asyncio.create_task(asyncio.to_thread(compact, self.log.store, segment))
            self.compactions.add(task)
            task.add_done_callback(self._compacted)

    def _compacted(self, task: asyncio.Task[int]) -> None:
        self.compactions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())  # type: ignore[arg-type]  # the segment stays, for the next run
            self._poke()

    async def _compact_all(self) -> None:
        self._compact(self.log.rotate())
        if self.compactions:
            await asyncio.gather(*self.compactions)

    # --- waiting ---------------------------------------------------------------------------

    def _poke(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, condition: Callable[[], bool]) -> None:
        while True:
            self._raise_failure()
            if condition():
                return
            await self._changed.wait()
