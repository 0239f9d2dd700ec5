"""kdist.storage on a local disk and on an object store (a loopback S3 server): files are
complete or absent, table directories appear whole, markers need a matching fingerprint."""

from __future__ import annotations

import pyarrow as pa
import pytest

from kdist import storage
from kdist.errors import UsageError


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("s3_bucket") + "/run"


def test_files_round_trip_and_replace_whole(location):
    path = storage.join(location, "stage", "out.json")
    storage.write_json(path, {"a": 1})
    storage.write_json(path, {"b": 2})
    assert storage.read_json(path) == {"b": 2}
    storage.write_table(storage.join(location, "t.parquet"), pa.table({"x": [1, 2]}))
    assert storage.read_table(storage.join(location, "t.parquet"))["x"].to_pylist() == [1, 2]
    assert storage.count_rows(storage.join(location, "t.parquet")) == 2


def test_a_failed_local_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "out.parquet")
    storage.write_table(path, pa.table({"x": [1, 2]}))
    fs, inner = storage.filesystem_for(path)
    with pytest.raises(RuntimeError):
        with storage._atomic_output(fs, inner) as stream:
            stream.write(b"half a file")
            raise RuntimeError("killed mid-write")
    assert storage.read_table(path)["x"].to_pylist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_a_table_directory_is_committed_whole(location):
    final = storage.join(location, "table")
    for values in ([1, 2], [3]):
        staging = storage.staging_dir(final)
        storage.write_table(storage.join(staging, "part-0.parquet"), pa.table({"x": values}))
        storage.commit_dir(staging, final)
    assert storage.read_table(final)["x"].to_pylist() == [3]
    assert storage.value_counts(final, "x") == {3: 1}
    assert not storage.exists(staging)


def test_done_marker_needs_matching_fingerprint(location):
    storage.mark_done(location, "abc", {"rows": 3})
    assert storage.done_summary(location, "abc") == {"rows": 3}
    assert not storage.is_done(location, "abd")
    storage.clear_done(location)
    assert not storage.is_done(location, "abc")


def test_reading_a_missing_stage_output_says_what_to_run(tmp_path):
    with pytest.raises(UsageError, match="run the stage that writes it first"):
        storage.read_table(str(tmp_path / "nope"))


def test_an_unknown_scheme_is_a_usage_error():
    with pytest.raises(UsageError, match="not a storage location"):
        storage.filesystem_for("nosuchfs://bucket/x")


def test_directories_upload_and_download(tmp_path, location):
    local = tmp_path / "model"
    (local / "sub").mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "sub" / "w.bin").write_bytes(b"\0" * 10)
    storage.upload_dir(local, storage.join(location, "model"))
    copy = storage.download_dir(storage.join(location, "model"), tmp_path / "copy")
    assert (copy / "sub" / "w.bin").read_bytes() == b"\0" * 10 and (copy / "config.json").exists()
