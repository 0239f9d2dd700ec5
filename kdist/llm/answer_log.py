"""Each worker's answer log: an answer is on disk the moment it comes back, not with its batch.

A worker appends every final response as one JSON line and flushes it (to the OS: a kill -9 of
the process loses nothing flushed; fsync is not asked for, so a power loss may). The log is
cut into segments; a segment is compacted into one Parquet shard of the store (named after
the segment, so compacting it twice writes the same shard) and then deleted. Workers compact
a segment when it holds `SEGMENT_ROWS` answers and when they go idle; `recover` compacts what a
killed run left, before the next run computes what is already answered. So a kill -9 re-pays
at most the requests that were on the wire.

Where the log lives:
- a local (or mounted) store: `<store>/logs/`, beside the shards; every answer a killed run
  logged is recovered by the next run, wherever its workers ran;
- object storage (no appends there): a spool on the worker's local disk
  (`$KDIST_SPOOL_DIR`, else the temp dir, `kdist-spool/<hash of the store URI>/`), compacted
  to the store every `SEGMENT_ROWS` answers or `SPOOL_MAX_AGE_S` seconds, whichever comes
  first, and when the worker goes idle. The next run on the same machine (a local Ray)
  recovers a killed run's spool; on a cluster a killed node's spool is gone with it, so there
  a kill re-pays at most the requests on the wire plus, per worker, the answers of the last
  `SPOOL_MAX_AGE_S` seconds (at most `SEGMENT_ROWS`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from kdist import storage
from kdist.llm.store import ResponseStore
from kdist.rows import RESPONSE_SCHEMA

log = logging.getLogger(__name__)

LOG_DIR = "logs"
SEGMENT_SUFFIX = ".jsonl"
# Answers per segment, so per shard: large enough that a run of millions of rows is thousands
# of shards, not millions; small enough that compacting one is a few milliseconds.
SEGMENT_ROWS = 2000
# On object storage, how old the oldest answer of a spool segment may get before it is
# uploaded (bounds what a lost node takes with it).
SPOOL_MAX_AGE_S = 30.0


def log_dir(store_uri: str) -> Path:
    """Where the logs of a store's workers go (see the module docstring)."""
    if storage.is_local(store_uri):
        return Path(storage.filesystem_for(store_uri)[1]) / LOG_DIR
    root = os.environ.get("KDIST_SPOOL_DIR") or os.path.join(tempfile.gettempdir(), "kdist-spool")
    return Path(root) / hashlib.sha256(store_uri.encode()).hexdigest()[:16]


class AnswerLog:
    """One worker's log. Not thread-safe: one event loop appends."""

    def __init__(self, store: ResponseStore, run_id: str, segment_rows: int = SEGMENT_ROWS) -> None:
        self.store, self.run_id, self.segment_rows = store, run_id, segment_rows
        self.max_age_s = None if storage.is_local(store.uri) else SPOOL_MAX_AGE_S
        self.dir = log_dir(store.uri)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.worker = uuid.uuid4().hex[:8]
        self.sequence = 0
        self.rows = 0
        self.opened_at = 0.0
        self.file: Any = None  # the current segment, opened by its first answer

    def append(self, row: dict[str, Any]) -> None:
        if self.file is None:
            self.sequence += 1
            self.rows, self.opened_at = 0, time.monotonic()
            name = f"{self.run_id}-{self.worker}-{self.sequence:06d}{SEGMENT_SUFFIX}"
            self.file = open(self.dir / name, "a", encoding="utf-8")  # noqa: SIM115 - held across calls
        self.file.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.file.flush()
        self.rows += 1

    def due(self) -> bool:
        """Whether the current segment should be compacted now."""
        if self.rows >= self.segment_rows:
            return True
        return self.rows > 0 and self.max_age_s is not None and time.monotonic() - self.opened_at >= self.max_age_s

    def rotate(self) -> Path | None:
        """Close the current segment and return it, to compact (None when there is none);
        the next answer starts the next segment."""
        if self.file is None:
            return None
        closed = Path(self.file.name)
        self.file.close()
        self.file, self.rows = None, 0
        return closed


def compact(store: ResponseStore, segment: Path) -> int:
    """One segment -> one shard named after it, then the segment is deleted; the rows.

    A line cut short by a kill (the last one) is skipped: that answer is asked again. Safe to
    repeat after a crash at any point: the shard's name is the segment's."""
    rows, skipped = _read_segment(segment)
    if skipped:
        log.info("%s: %d unfinished line(s) skipped (cut by a kill; asked again)", segment, skipped)
    if rows:
        try:
            table = pa.Table.from_pylist(rows, schema=RESPONSE_SCHEMA)
        except (pa.ArrowException, TypeError, ValueError) as err:
            aside = segment.with_name(segment.name + ".corrupt")
            segment.rename(aside)
            log.warning("answer log %s does not hold response rows (%s): set aside as %s, its rows are asked again", segment, err, aside)
            return 0
        run_id, tag = _run_and_tag(segment)
        store.write_shard(table, run_id, tag=tag)
    segment.unlink(missing_ok=True)
    return len(rows)


def recover(store: ResponseStore) -> int:
    """Compact every segment a run left behind (killed workers, or a driver that died before
    its workers went idle); the rows recovered. Only one run uses a store at a time."""
    directory = log_dir(store.uri)
    if not directory.is_dir():
        return 0
    return sum(compact(store, segment) for segment in sorted(directory.glob(f"*{SEGMENT_SUFFIX}")))


def _read_segment(segment: Path) -> tuple[list[dict[str, Any]], int]:
    rows, skipped = [], 0
    with open(segment, encoding="utf-8") as lines:
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                skipped += 1
    return rows, skipped


def _run_and_tag(segment: Path) -> tuple[str, str]:
    """`<run_id>-<worker>-<sequence>.jsonl` -> (run_id, "<worker>-<sequence>")."""
    run_id, worker, sequence = segment.name.removesuffix(SEGMENT_SUFFIX).rsplit("-", 2)
    return run_id, f"{worker}-{sequence}"
