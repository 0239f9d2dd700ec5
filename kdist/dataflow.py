"""Ray Data pieces that stages share: joining a stream with a stored table by key.

Two ways, chosen by the stored table's size:
- broadcast (up to BROADCAST_MAX_ROWS rows): each worker reads the stored table's columns
  once, straight from storage, and joins every batch of the stream against it; no shuffle,
  and a run of a few thousand rows costs no more than its reads;
- hash shuffle (larger tables): Ray Data's own join, which partitions both sides across
  aggregator actors. Those actors ask for a fraction of a CPU: on a small machine whole-CPU
  actors starve the readers that feed them. Its fixed cost (about 9 s a join on 2 cores,
  measured) pays off only for tables too large to copy to every worker.
Neither holds the tables in the driver.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kdist import storage

AGGREGATOR_CPUS = 0.1
SIDE_STAGE_CPUS = 0.1
ROWS_PER_PARTITION = 250_000
# A worker holds this many rows of the stored side (prompts with their messages: a few
# hundred bytes a row, so about 0.2 GB at most).
BROADCAST_MAX_ROWS = 500_000


def join_stored(stream: Any, uri: str, columns: list[str], on: tuple[str, ...]) -> Any:
    """Rows of `stream` joined (inner) with the stored table at `uri` on the key columns;
    the result has the stream's columns plus `columns` of the stored table."""
    from ray.data import ActorPoolStrategy

    rows = storage.count_rows(uri)
    if rows <= BROADCAST_MAX_ROWS:
        return stream.map_batches(
            _BroadcastJoin, fn_constructor_kwargs={"uri": uri, "columns": columns, "on": on},
            batch_format="pyarrow", compute=ActorPoolStrategy(min_size=1, max_size=2), num_cpus=SIDE_STAGE_CPUS,
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


class _BroadcastJoin:
    """Ray Data actor: the stored table once per actor, then an index lookup per batch."""

    def __init__(self, uri: str, columns: list[str], on: tuple[str, ...]) -> None:
        self.on = on
        self.stored = storage.read_table(uri, columns=list(dict.fromkeys([*on, *columns])))
        self.keys = key_column(self.stored, on)
        self.payload = self.stored.select([c for c in columns if c not in on])

    def __call__(self, batch: pa.Table) -> pa.Table:
        at = pc.index_in(key_column(batch, self.on), value_set=self.keys)
        found = pc.is_valid(at)
        batch, at = batch.filter(found), at.filter(found)
        matched = self.payload.take(at)
        for name in matched.column_names:
            batch = batch.append_column(name, matched[name])
        return batch
