"""The generate stage's output: a directory of Parquet shards that are complete or absent.

Each batch of answers becomes one shard, written under a hidden temporary name and renamed
into place, so a kill -9 leaves only whole shards (and hidden temp files, which readers skip:
pyarrow and `datasets` ignore names starting with '.' or '_'). Shard names sort by run, so
"newer" is well defined when a rerun answers a row again.

The directory may be local, a mounted volume, or object storage (s3://, gs://, abfs://)
through pyarrow's filesystems; on object stores a shard upload is itself all-or-nothing.
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kdist.rows import RESPONSE_SCHEMA

log = logging.getLogger(__name__)

SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an object-store URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent writers."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


@dataclass
class ShardStore:
    uri: str

    def __post_init__(self) -> None:
        self.fs, self.root = filesystem_for(self.uri)

    def shard_paths(self) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        except FileNotFoundError:
            return []
        names = [
            info.path for info in infos
            if info.type == pafs.FileType.File
            and info.base_name.startswith(SHARD_PREFIX) and info.base_name.endswith(SHARD_SUFFIX)
        ]  # fmt: skip
        return sorted(names)

    def write_shard(self, table: pa.Table, run_id: str) -> str:
        """Write one shard: temporary hidden name, then rename (complete or absent)."""
        self.fs.create_dir(self.root, recursive=True)
        name = f"{SHARD_PREFIX}{run_id}-{uuid.uuid4().hex[:12]}{SHARD_SUFFIX}"
        final = f"{self.root}/{name}"
        self._write_atomically(table.cast(RESPONSE_SCHEMA), final)
        return final

    def _write_atomically(self, table: pa.Table, final: str) -> None:
        temporary = f"{self.root}/.{final.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:6]}.tmp"
        try:
            with self.fs.open_output_stream(temporary) as stream:
                pq.write_table(table, stream)
            self.fs.move(temporary, final)
        finally:
            if self.fs.get_file_info(temporary).type != pafs.FileType.NotFound:
                self.fs.delete_file(temporary)

    def remove_temporaries(self) -> int:
        """Drop half-written shards a killed run left behind (only one writer per directory)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        except FileNotFoundError:
            return 0
        stale = [i.path for i in infos if i.base_name.startswith(f".{SHARD_PREFIX}") and i.base_name.endswith(".tmp")]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def read_columns(self, columns: list[str]) -> Iterator[tuple[str, pa.Table]]:
        for path in self.shard_paths():
            yield path, pq.read_table(path, columns=columns, filesystem=self.fs)

    def read_all(self) -> pa.Table:
        tables = [pq.read_table(path, filesystem=self.fs, schema=RESPONSE_SCHEMA) for path in self.shard_paths()]
        return pa.concat_tables(tables) if tables else RESPONSE_SCHEMA.empty_table()

    def succeeded_hashes(self) -> set[str]:
        """Request hashes that already have a successful answer (never asked for again)."""
        done: set[str] = set()
        for _, table in self.read_columns(["request_hash", "error"]):
            done.update(table.filter(pc.is_null(table["error"]))["request_hash"].to_pylist())
        return done

    def drop_superseded(self, run_id: str) -> int:
        """Keep one row per id; rewrite shards that hold the others. Returns rows dropped.

        An id answered in this run keeps that row (it carries the current request hash).
        Otherwise a successful row beats an error row, and a newer shard beats an older one.
        Safe to repeat: a crash half-way leaves whole shards, and the next run finishes it.
        """
        winners: dict[str, tuple[tuple[bool, bool, str], str]] = {}
        rows_by_shard: dict[str, list[str]] = {}
        for path, table in self.read_columns(["id", "error"]):
            this_run = f"/{SHARD_PREFIX}{run_id}-" in path
            ids = table["id"].to_pylist()
            rows_by_shard[path] = ids
            for row_id, error in zip(ids, table["error"].to_pylist()):
                rank = (this_run, error is None, path)
                if row_id not in winners or rank > winners[row_id][0]:
                    winners[row_id] = (rank, path)
        dropped = 0
        for path, ids in rows_by_shard.items():
            keep = [winners[row_id][1] == path for row_id in ids]
            # One id can sit twice in one shard only if prompts repeated it; keep its first.
            seen: set[str] = set()
            for index, row_id in enumerate(ids):
                if keep[index] and row_id in seen:
                    keep[index] = False
                seen.add(row_id)
            if all(keep):
                continue
            dropped += keep.count(False)
            table = pq.read_table(path, filesystem=self.fs, schema=RESPONSE_SCHEMA)
            kept = table.filter(pa.array(keep))
            if kept.num_rows:
                self._write_atomically(kept, path)
            else:
                self.fs.delete_file(path)
        return dropped
