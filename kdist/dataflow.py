"""Ray Data pieces that stages share: joining a stream with a stored table by key.

Two ways, chosen by the stored table's size:
- broadcast (up to BROADCAST_MAX_ROWS rows): each worker process reads the stored table's
  columns once, straight from storage, keeps them (keyed by the files' identity, so a table
  rewritten in between is read again) and joins every batch of the stream against them; no
  shuffle, and a run of a few thousand rows costs no more than its reads. These are tasks, not
  actors: Ray reuses a task's worker process, while every actor starts a fresh one, about
  3.5 s a join on 2 cores against 0.1 s as tasks (benchmarks/side_stage_workers.py);
- hash shuffle (larger tables): Ray Data's own join, which partitions both sides across
  aggregator actors. Those actors ask for a fraction of a CPU: on a small machine whole-CPU
  actors starve the readers that feed them. Its fixed cost (about 9 s a join on 2 cores,
  measured) pays off only for tables too large to copy to every worker.
Neither holds the tables in the driver. A worker process that ran a broadcast join keeps its
last two stored sides (at most 2 x BROADCAST_MAX_ROWS rows) until it exits or a later join
replaces them: the memory that buys not reading them again.
"""

from __future__ import annotations

import functools
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kdist import storage
from kdist.runtime import SIDE_STAGE_CPUS, SIDE_STAGE_TASKS

AGGREGATOR_CPUS = 0.1
ROWS_PER_PARTITION = 250_000
# A worker holds this many rows of the stored side (prompts with their messages: a few
# hundred bytes a row, so about 0.2 GB at most).
BROADCAST_MAX_ROWS = 500_000


def join_stored(stream: Any, uri: str, columns: list[str], on: tuple[str, ...]) -> Any:
    """Rows of `stream` joined (inner) with the stored table at `uri` on the key columns;
    the result has the stream's columns plus `columns` of the stored table."""
    rows = storage.count_rows(uri)
    if rows <= BROADCAST_MAX_ROWS:
        return stream.map_batches(
            _broadcast_join, fn_kwargs={"stored": stored_side_key(uri, columns, on)}, batch_format="pyarrow",
            concurrency=SIDE_STAGE_TASKS, num_cpus=SIDE_STAGE_CPUS,
        )  # fmt: skip
    stored = storage.read_dataset(uri, columns=list(dict.fromkeys([*on, *columns])))
    return stream.join(
        stored, join_type="inner", num_partitions=max(1, min(64, -(-rows // ROWS_PER_PARTITION))), on=on,
        aggregator_ray_remote_args={"num_cpus": AGGREGATOR_CPUS},
    )  # fmt: skip


def key_column(table: pa.Table, on: tuple[str, ...]) -> pa.Array:
    """The key columns as one string column (one key, or several joined by a separator)."""
    if len(on) == 1:
        return pc.cast(table[on[0]], pa.string()).combine_chunks()
    parts = [pc.fill_null(pc.cast(table[name], pa.string()), "") for name in on]
    return pc.binary_join_element_wise(*parts, "\x1f").combine_chunks()


def stored_side_key(uri: str, columns: list[str], on: tuple[str, ...]) -> dict[str, Any]:
    """What names a stored side in a worker's cache: the table, its files' identity (so a
    table rewritten in between is read again) and the columns."""
    return {"uri": uri, "version": storage.files_fingerprint(uri), "columns": tuple(columns), "on": on}


def _broadcast_join(batch: pa.Table, stored: dict[str, Any]) -> pa.Table:
    keys, payload = _stored_side(**stored)
    at = pc.index_in(key_column(batch, stored["on"]), value_set=keys)
    found = pc.is_valid(at)
    batch, at = batch.filter(found), at.filter(found)
    matched = payload.take(at)
    for name in matched.column_names:
        batch = batch.append_column(name, matched[name])
    return batch


# Two: a filter joins two stored tables in one pass.
@functools.lru_cache(maxsize=2)
def _stored_side(uri: str, version: str, columns: tuple[str, ...], on: tuple[str, ...]) -> tuple[pa.Array, pa.Table]:
    """The stored table's keys and payload columns, read once per worker process and version."""
    del version  # part of the cache key only
    table = storage.read_table(uri, columns=list(dict.fromkeys([*on, *columns])))
    return key_column(table, on), table.select([c for c in columns if c not in on])
