"""The responses store: directories of Parquet shards that are complete or absent.

`answers/` holds rows of kdist.rows.RESPONSE_SCHEMA, keyed by (id, candidate): a table
directory that pyarrow, Ray Data and `datasets` read as one dataset. Shards are written under
a hidden temporary name renamed into place, so a kill -9 leaves only whole shards (and hidden
temp files, which readers skip); answers reach them through the workers' logs
(kdist.llm.answer_log). Shard names sort by run, so "newer" is well defined when a rerun
answers a key again. Beside the shards, `requests/` records which (id, candidate,
request_hash) each run was asked for, so a summary covers exactly the current request set.

Shards carry page checksums, and `set_aside_corrupt` reads every shard (footer and pages)
before a run trusts them: a truncated or corrupt shard is moved to `corrupt/` with a warning
that names it, and only its rows are asked again. A shard that fails to read later names
itself in a one-line UsageError, never in a bare traceback.

Everything that scans the store works on Arrow columns, never on Python objects per row: a
store of millions of answers stays a few columns of memory in the driver.

The directory may be local, a mounted volume, or object storage (kdist.storage).
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kdist import storage
from kdist.errors import UsageError
from kdist.rows import RESPONSE_SCHEMA

log = logging.getLogger(__name__)

SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
ANSWERS_DIR = "answers"
REQUESTS_DIR = "requests"
CORRUPT_DIR = "corrupt"
HASH_CHARS = 32  # kdist.llm.base.request_hash: 128 bits as hex
REQUEST_INDEX_SCHEMA = pa.schema([("id", pa.string()), ("candidate", pa.string()), ("request_hash", pa.string())])


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent writers."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def response_key(table: pa.Table) -> pa.Array:
    """(id, candidate) as one string column, for vectorised grouping."""
    candidate = pc.fill_null(table["candidate"], "")
    return pc.binary_join_element_wise(table["id"], candidate, "\x1f")


class HashSet:
    """A set of request hashes as one sorted numpy array of 32-byte strings: 32 bytes a hash
    (a Python set of str takes about 100), and membership of a whole batch in one call,
    without rebuilding a hash table per batch as pyarrow's is_in would."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.hashes = hashes

    @classmethod
    def of(cls, hashes: pa.Array) -> HashSet:
        return cls(np.unique(_fixed_width(hashes)))

    def __len__(self) -> int:
        return len(self.hashes)

    def contains(self, hashes: pa.Array | pa.ChunkedArray) -> np.ndarray:
        wanted = _fixed_width(hashes)
        if not len(self.hashes) or not len(wanted):
            return np.zeros(len(wanted), dtype=bool)
        at = np.searchsorted(self.hashes, wanted).clip(max=len(self.hashes) - 1)
        return self.hashes[at] == wanted


def _fixed_width(hashes: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks()
    fixed = hashes.cast(pa.binary()).cast(pa.binary(HASH_CHARS))
    if not len(fixed):
        return np.array([], dtype=f"S{HASH_CHARS}")
    values = np.frombuffer(fixed.buffers()[1], dtype=f"S{HASH_CHARS}")
    return values[fixed.offset : fixed.offset + len(fixed)]


@dataclass
class ResponseStore:
    uri: str

    def __post_init__(self) -> None:
        self.fs, _ = storage.filesystem_for(self.uri)

    # --- writing ---------------------------------------------------------------------------

    @property
    def answers_uri(self) -> str:
        return storage.join(self.uri, ANSWERS_DIR)

    def write_shard(self, table: pa.Table, run_id: str, directory: str = ANSWERS_DIR, tag: str | None = None) -> str:
        """One shard in one of the store's directories, complete or absent. `tag` (unique
        within the run) makes the name repeatable: writing it again replaces it."""
        name = f"{SHARD_PREFIX}{run_id}-{tag or uuid.uuid4().hex[:12]}{SHARD_SUFFIX}"
        uri = storage.join(self.uri, directory, name)
        schema = REQUEST_INDEX_SCHEMA if directory == REQUESTS_DIR else RESPONSE_SCHEMA
        storage.write_bytes(uri, _checksummed_parquet(table.select(schema.names).cast(schema)))
        return uri

    def record_requests(self, table: pa.Table, run_id: str) -> None:
        """Remember what this run was asked for (all of it, answered before or not)."""
        self.write_shard(table, run_id, REQUESTS_DIR)

    def remove_temporaries(self) -> int:
        """Drop half-written shards a killed run left behind (only one run per store)."""
        stale = [
            path for directory in (self.answers_uri, storage.join(self.uri, REQUESTS_DIR))
            for path in storage.list_files(directory, prefix=f".{SHARD_PREFIX}", suffix=".tmp")
        ]  # fmt: skip
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    # --- reading ---------------------------------------------------------------------------

    def shard_paths(self) -> list[str]:
        return storage.list_files(self.answers_uri, prefix=SHARD_PREFIX, suffix=SHARD_SUFFIX)

    def read_columns(self, columns: list[str]) -> Iterator[tuple[str, pa.Table]]:
        for path in self.shard_paths():
            yield path, self._read(path, columns)

    def _read(self, path: str, columns: list[str] | None = None) -> pa.Table:
        try:
            return pq.read_table(path, columns=columns, filesystem=self.fs, schema=RESPONSE_SCHEMA)
        except (OSError, pa.ArrowException) as err:
            raise UsageError(f"responses shard {path} cannot be read ({_first_line(err)}); a rerun sets it aside and asks its rows again") from None

    # --- verification ----------------------------------------------------------------------

    def set_aside_corrupt(self) -> list[str]:
        """Move every shard that does not read whole (footer, pages, checksums) to `corrupt/`,
        with one warning line each; return their new locations. Its rows are then missing
        from the done set, so the run asks them again."""
        moved = []
        for path in self.shard_paths():
            problem = _unreadable(self.fs, path)
            if problem is None:
                continue
            target = storage.join(self.uri, CORRUPT_DIR, path.rsplit("/", 1)[-1] + ".corrupt")
            _, target_path = storage.filesystem_for(target)
            self.fs.create_dir(target_path.rsplit("/", 1)[0], recursive=True)
            self.fs.move(path, target_path)
            log.warning("responses shard %s is corrupt (%s): moved to %s, its rows are asked again", path, problem, target_path)
            moved.append(target_path)
        return moved

    def read_all(self, columns: list[str] | None = None) -> pa.Table:
        """Small stores and tests; stages stream with `dataset()`."""
        tables = [table for _, table in self.read_columns(columns or RESPONSE_SCHEMA.names)]
        schema = pa.schema([RESPONSE_SCHEMA.field(c) for c in columns]) if columns else RESPONSE_SCHEMA
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def dataset(self, columns: list[str] | None = None):  # -> ray.data.Dataset
        """Every stored answer as a lazy Ray Dataset."""
        import ray.data

        if not self.shard_paths():
            return ray.data.from_arrow(RESPONSE_SCHEMA.empty_table()).select_columns(columns or RESPONSE_SCHEMA.names)
        return ray.data.read_parquet(
            storage.filesystem_for(self.answers_uri)[1], filesystem=self.fs, columns=columns, num_cpus=storage.READ_CPUS
        )

    def succeeded_hashes(self) -> HashSet:
        """Request hashes that already have a successful answer (never asked for again)."""
        chunks = [
            table.filter(pc.is_null(table["error"]))["request_hash"].combine_chunks()
            for _, table in self.read_columns(["request_hash", "error"])
        ]
        return HashSet.of(pa.concat_arrays(chunks) if chunks else pa.array([], pa.string()))

    def requested(self, run_id: str) -> pa.Table:
        """The (id, candidate, request_hash) set that run `run_id` was asked for."""
        directory = storage.join(self.uri, REQUESTS_DIR)
        paths = storage.list_files(directory, prefix=f"{SHARD_PREFIX}{run_id}-", suffix=SHARD_SUFFIX)
        tables = [self._read_index(path) for path in paths]
        if not tables:
            return REQUEST_INDEX_SCHEMA.empty_table()
        # A retried Ray task may have recorded a block twice: one row per key. One key asked
        # with two different requests, though, means two source rows share an id.
        grouped = pa.concat_tables(tables).group_by(["id", "candidate"], use_threads=False).aggregate(
            [("request_hash", "last"), ("request_hash", "count_distinct")]
        )
        repeated = grouped.filter(pc.greater(grouped["request_hash_count_distinct"], 1))
        if repeated.num_rows:
            raise UsageError(
                f"id '{repeated['id'][0]}' names {repeated['request_hash_count_distinct'][0]} different prompts "
                f"({repeated.num_rows} ids repeated); ids must be unique"
            )
        return grouped.select(["id", "candidate", "request_hash_last"]).rename_columns(["id", "candidate", "request_hash"])

    def _read_index(self, path: str) -> pa.Table:
        try:
            return pq.read_table(path, filesystem=self.fs, schema=REQUEST_INDEX_SCHEMA)
        except (OSError, pa.ArrowException) as err:
            raise UsageError(f"request index {path} cannot be read ({_first_line(err)}); delete it and rerun") from None

    # --- answers shared by keys ------------------------------------------------------------

    def copy_shared_answers(self, run_id: str) -> int:
        """Give every key that run `run_id` was asked for, and whose request was already
        answered under another key, a copy of that answer under its own key; return how many.

        Two keys can carry one request (two comparisons that render the same judge prompt,
        one prompt under two ids): the done set is by request hash, so the second key is
        never asked, and without the copy it would have no row. A copy is written as this
        run's (it carries the current request hash) with `attempts` 0: nothing was asked for
        it, and the summary counts neither a request nor tokens for it."""
        requested = self.requested(run_id)
        if not requested.num_rows:
            return 0
        answered = [
            table.filter(pc.is_null(table["error"])).select(["id", "candidate", "request_hash"])
            for _, table in self.read_columns(["id", "candidate", "request_hash", "error"])
        ]
        if not answered:
            return 0
        answered_table = pa.concat_tables(answered)
        has_own = pc.is_in(_keyed_hash(requested), value_set=_keyed_hash(answered_table).combine_chunks())
        wanted = requested.filter(pc.invert(has_own))
        wanted = wanted.filter(pa.array(HashSet.of(answered_table["request_hash"]).contains(wanted["request_hash"])))
        if not wanted.num_rows:
            return 0
        sources = self._first_answer_per_hash(pa.array(sorted(set(wanted["request_hash"].to_pylist())), pa.string()))
        at = {hash_: index for index, hash_ in enumerate(sources["request_hash"].to_pylist())}
        copies = sources.take(pa.array([at[hash_] for hash_ in wanted["request_hash"].to_pylist()], pa.int64()))
        copies = copies.set_column(copies.schema.get_field_index("id"), "id", wanted["id"])
        copies = copies.set_column(copies.schema.get_field_index("candidate"), "candidate", wanted["candidate"])
        copies = copies.set_column(copies.schema.get_field_index("attempts"), "attempts", pa.array([0] * copies.num_rows, pa.int64()))
        self.write_shard(copies, run_id, tag="copies")
        return copies.num_rows

    def _first_answer_per_hash(self, hashes: pa.Array) -> pa.Table:
        """One successful stored row for each of `hashes` (the first found)."""
        parts = [
            table.filter(pc.and_(pc.is_null(table["error"]), pc.is_in(table["request_hash"], value_set=hashes)))
            for table in (self._read(path) for path in self.shard_paths())
        ]
        found = pa.concat_tables(parts)
        first: dict[str, int] = {}
        for index, hash_ in enumerate(found["request_hash"].to_pylist()):
            first.setdefault(hash_, index)
        return found.take(pa.array(list(first.values()), pa.int64()))

    # --- compaction ------------------------------------------------------------------------

    def drop_superseded(self, run_id: str) -> int:
        """Keep one row per (id, candidate); rewrite shards that hold the others.

        A key answered in this run keeps that row (it carries the current request hash).
        Otherwise a successful row beats an error row, and a newer shard beats an older one.
        Safe to repeat: a crash half-way leaves whole shards, and the next run finishes it.
        """
        paths = self.shard_paths()
        if not paths:
            return 0
        parts = []
        for index, path in enumerate(paths):
            table = self._read(path, ["id", "candidate", "error"])
            n = table.num_rows
            parts.append(pa.table({
                "key": response_key(table),
                "this_run": pa.array(np.full(n, f"/{SHARD_PREFIX}{run_id}-" in path)),
                "ok": pc.is_null(table["error"]),
                "shard": pa.array(np.full(n, index, dtype=np.int32)),
                "row": pa.array(np.arange(n, dtype=np.int32)),
            }))  # fmt: skip
        ranked = pa.concat_tables(parts).sort_by(
            [("key", "ascending"), ("this_run", "descending"), ("ok", "descending"), ("shard", "descending"), ("row", "ascending")]
        )
        keys = ranked["key"].combine_chunks()
        first = np.ones(len(keys), dtype=bool)
        if len(keys) > 1:
            first[1:] = pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)
        losers = ranked.filter(pa.array(~first))
        dropped = 0
        for shard in np.unique(losers["shard"].to_numpy()):
            rows = losers.filter(pc.equal(losers["shard"], shard))["row"].to_numpy()
            dropped += len(rows)
            self._rewrite_without(paths[int(shard)], rows)
        return dropped

    def _rewrite_without(self, path: str, rows: np.ndarray) -> None:
        table = self._read(path)
        keep = np.ones(table.num_rows, dtype=bool)
        keep[rows] = False
        kept = table.filter(pa.array(keep))
        if kept.num_rows:
            storage.write_bytes(self._uri_of(path), _checksummed_parquet(kept))
        else:
            self.fs.delete_file(path)

    def _uri_of(self, path: str) -> str:
        """A path inside the store's filesystem back as a location kdist.storage takes."""
        return storage.join(self.answers_uri, path.rsplit("/", 1)[-1])


def _keyed_hash(table: pa.Table) -> pa.Array:
    """(id, candidate, request_hash) as one string column."""
    return pc.binary_join_element_wise(response_key(table), table["request_hash"], "\x1f")


def _checksummed_parquet(table: pa.Table) -> bytes:
    """A shard as Parquet bytes with a CRC per page, so flipped bytes are noticed on read
    (shards are a few thousand rows: built in memory, then written complete or absent)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)
    return sink.getvalue().to_pybytes()


def _unreadable(fs: pafs.FileSystem, path: str) -> str | None:
    """Why a shard cannot be trusted (truncated, bad footer, a page that fails its checksum
    or does not decode), or None. Reads one row group at a time."""
    try:
        with fs.open_input_file(path) as handle:
            shard = pq.ParquetFile(handle, page_checksum_verification=True)
            for group in range(shard.num_row_groups):
                shard.read_row_group(group)
    except (OSError, pa.ArrowException, ValueError) as err:
        return _first_line(err)
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else type(err).__name__
