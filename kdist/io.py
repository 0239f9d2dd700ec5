"""Reading and writing stage outputs so that nothing already written is lost or half-written.

Every write goes to a temporary name in the same directory and is renamed into place, so a
file is either complete or absent, even after a kill -9. A stage marks itself finished with a
`_SUCCESS.json` that records a fingerprint of the config it ran with; `--resume` skips a stage
only when that fingerprint still matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SUCCESS_FILE = "_SUCCESS.json"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read one Parquet file or a directory of them (hidden/temp files are ignored)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it first")
    return pq.read_table(path, schema=schema)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary name; replace `path` with it on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fingerprint(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mark_done(stage_dir: Path, fingerprint_: str, summary: dict[str, Any]) -> None:
    write_json(stage_dir / SUCCESS_FILE, {"fingerprint": fingerprint_, "summary": summary})


def is_done(stage_dir: Path, fingerprint_: str) -> bool:
    marker = stage_dir / SUCCESS_FILE
    if not marker.exists():
        return False
    return json.loads(marker.read_text()).get("fingerprint") == fingerprint_


def clear_done(stage_dir: Path) -> None:
    (stage_dir / SUCCESS_FILE).unlink(missing_ok=True)
