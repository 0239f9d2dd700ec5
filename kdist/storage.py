"""Where every stage reads and writes: local paths, mounted volumes and object storage.

A location is a string: a local path, or a URI that pyarrow's filesystems understand
(`file://`, `s3://`, `gs://`, `abfs://`, ...). Writes never leave half a file behind:

- a file is written under a hidden temporary name and renamed into place on a local
  filesystem; on an object store one upload is itself all-or-nothing, so it goes to its name;
- a table directory (sharded Parquet, readable as one dataset by pyarrow, Ray Data and
  `datasets`) is built in a hidden sibling and moved into place only when complete;
- a finished stage leaves `_SUCCESS.json`, the commit marker, with a fingerprint of the
  settings it ran with: `--resume` skips a stage only when that fingerprint still matches.

Readers skip names starting with '.' or '_' (pyarrow's and Ray Data's default), so temporary
and marker files never show up as data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kdist.errors import UsageError

SUCCESS_FILE = "_SUCCESS.json"
# Ray resources of a read task: reading is light beside the model actors that consume it, and
# on a small node whole-CPU reads wait forever behind actors that hold every CPU.
READ_CPUS = 0.1


# --- locations ---------------------------------------------------------------------------------


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def absolute(uri: str) -> str:
    """Local paths made absolute (workers run in their own working dirs); URIs unchanged."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
            raise UsageError(f"{uri}: not a storage location kdist can use ({err})") from None
    return pafs.LocalFileSystem(), absolute(uri)


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = filesystem_for(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = filesystem_for(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def make_dirs(uri: str) -> None:
    fs, path = filesystem_for(uri)
    fs.create_dir(path, recursive=True)


def remove(uri: str) -> None:
    """Delete a file or a directory tree; nothing there is fine."""
    fs, path = filesystem_for(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def list_files(uri: str, prefix: str = "", suffix: str = "") -> list[str]:
    """Paths (inside the filesystem) of the files directly in a directory, sorted."""
    fs, path = filesystem_for(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except FileNotFoundError:
        return []
    return sorted(
        info.path for info in infos
        if info.type == pafs.FileType.File and info.base_name.startswith(prefix) and info.base_name.endswith(suffix)
    )  # fmt: skip


# --- whole files -------------------------------------------------------------------------------


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem_for(uri)
    with _atomic_output(fs, path) as stream:
        stream.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def write_json(uri: str, data: Any) -> None:
    write_text(uri, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_text(uri: str) -> str:
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_table(uri: str, table: pa.Table) -> None:
    fs, path = filesystem_for(uri)
    with _atomic_output(fs, path) as stream:
        pq.write_table(table, stream)


def read_table(uri: str, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file or a directory of them (hidden and marker files are skipped)."""
    fs, path = filesystem_for(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise UsageError(f"{uri} does not exist: run the stage that writes it first")
    return pq.read_table(path, filesystem=fs, schema=schema, columns=columns)


def count_rows(uri: str) -> int:
    """Rows of a Parquet file or directory, from the footers only."""
    fs, path = filesystem_for(uri)
    files = list_files(uri, suffix=".parquet") if is_dir(uri) else [path]
    return sum(pq.ParquetFile(fs.open_input_file(name)).metadata.num_rows for name in files)


def value_counts(uri: str, column: str) -> dict[Any, int]:
    """How often each value of one column occurs, read one file at a time (so a table of
    millions of rows never sits in memory whole)."""
    fs, path = filesystem_for(uri)
    files = list_files(uri, suffix=".parquet") if is_dir(uri) else [path]
    counts: dict[Any, int] = {}
    for name in files:
        values = pq.read_table(name, columns=[column], filesystem=fs)[column]
        for item in pc.value_counts(values).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


@contextmanager
def _atomic_output(fs: pafs.FileSystem, path: str) -> Iterator[Any]:
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        # An object-store upload is all-or-nothing: the object appears only when complete.
        with fs.open_output_stream(path) as stream:
            yield stream
        return
    temporary = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open_output_stream(temporary) as stream:
            yield stream
        fs.move(temporary, path)
    finally:
        if fs.get_file_info(temporary).type != pafs.FileType.NotFound:
            fs.delete_file(temporary)


# --- table directories (sharded Parquet) -------------------------------------------------------


def staging_dir(uri: str) -> str:
    """A hidden sibling to build a table directory in, before `commit_dir` moves it."""
    parent, name = uri.rstrip("/").rsplit("/", 1) if "/" in uri.rstrip("/") else (".", uri)
    return join(parent, f".{name}.staging-{uuid.uuid4().hex[:8]}")


def commit_dir(staging: str, final: str) -> None:
    """Replace `final` with the complete directory `staging`.

    Local filesystems rename the directory in one step. Object stores have no directory
    rename, so each file is moved; the stage's `_SUCCESS.json`, written after this, is what
    marks the output as complete there.
    """
    fs, src = filesystem_for(staging)
    _, dst = filesystem_for(final)
    remove(final)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        fs.move(src, dst)
        return
    fs.create_dir(dst, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type == pafs.FileType.File:
            fs.move(info.path, dst + info.path[len(src):])
    fs.delete_dir(src)


def write_dataset(dataset: Any, uri: str, schema: pa.Schema | None = None) -> None:
    """Write a Ray Dataset as a table directory at `uri`, complete or absent."""
    fs, _ = filesystem_for(uri)
    staging = staging_dir(uri)
    _, staging_path = filesystem_for(staging)
    kwargs = {"schema": schema} if schema is not None else {}
    dataset.write_parquet(staging_path, filesystem=fs, ray_remote_args={"num_cpus": READ_CPUS}, **kwargs)
    if not exists(staging):  # an empty dataset writes no file: still an (empty) table
        write_table(join(staging, "part-empty.parquet"), (schema or pa.schema([])).empty_table())
    commit_dir(staging, uri)


def read_dataset(uri: str, columns: list[str] | None = None) -> Any:
    """A table directory (or one Parquet file) as a lazy Ray Dataset."""
    import ray.data

    fs, path = filesystem_for(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise UsageError(f"{uri} does not exist: run the stage that writes it first")
    return ray.data.read_parquet(path, filesystem=fs, columns=columns, num_cpus=READ_CPUS)


# --- local model directories -------------------------------------------------------------------


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a local directory under a temporary name; replace `path` with it on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def upload_dir(local: Path, uri: str) -> None:
    """Copy a local directory tree to `uri` (anything there before is replaced)."""
    fs, path = filesystem_for(uri)
    staging = staging_dir(uri)
    _, staging_path = filesystem_for(staging)
    pafs.copy_files(str(local), staging_path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    commit_dir(staging, uri)


def download_dir(uri: str, local: Path) -> Path:
    """A local copy of a directory tree on object storage (for libraries that need paths)."""
    fs, path = filesystem_for(uri)
    with atomic_dir(local) as tmp:
        pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


# --- stage markers -----------------------------------------------------------------------------


def fingerprint(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def files_fingerprint(uri: str, suffixes: tuple[str, ...] = ()) -> str:
    """What identifies the files at `uri` (one file or a tree): their relative paths, sizes and
    modification times (on object stores, LastModified changes with every upload), so it
    costs a listing even for many GB. A reference that is no file (a hub id) is its own
    identity. With `suffixes`, only files with those endings count."""
    if "://" not in uri and not os.path.exists(os.path.expanduser(uri)):
        return fingerprint(uri)
    fs, root = filesystem_for(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return fingerprint(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True)) if info.type == pafs.FileType.Directory else [info]
    files = sorted(
        (found.path[len(root):], found.size, found.mtime_ns)
        for found in infos
        if found.type == pafs.FileType.File and (not suffixes or found.path.endswith(suffixes))
    )
    return fingerprint(files)


def unreadable_parquet(uri: str) -> list[str]:
    """The Parquet files under a table directory whose footer cannot be read (truncated or
    corrupt): reading a footer is one small ranged read per file, cheap next to the data."""
    fs, root = filesystem_for(uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    bad = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet") or info.base_name[0] in "._":
            continue
        try:
            with fs.open_input_file(info.path) as handle:
                pq.read_metadata(handle)
        except (OSError, pa.ArrowException):
            bad.append(info.path)
    return bad


def mark_done(stage_uri: str, fingerprint_: str, summary: dict[str, Any]) -> None:
    write_json(join(stage_uri, SUCCESS_FILE), {"fingerprint": fingerprint_, "summary": summary})


def done_summary(stage_uri: str, fingerprint_: str) -> dict[str, Any] | None:
    """The summary of a finished stage whose fingerprint matches, else None."""
    marker = join(stage_uri, SUCCESS_FILE)
    if not exists(marker):
        return None
    done = read_json(marker)
    return done.get("summary", {}) if done.get("fingerprint") == fingerprint_ else None


def is_done(stage_uri: str, fingerprint_: str) -> bool:
    return done_summary(stage_uri, fingerprint_) is not None


def clear_done(stage_uri: str) -> None:
    remove(join(stage_uri, SUCCESS_FILE))
