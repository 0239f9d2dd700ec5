import pyarrow as pa
import pytest

from kdist import io


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "out.parquet"
    io.write_table(path, pa.table({"x": [1, 2]}))
    with pytest.raises(RuntimeError):
        with io.atomic_path(path) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("killed mid-write")
    assert io.read_table(path)["x"].to_pylist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_atomic_dir_replaces_whole_directory(tmp_path):
    target = tmp_path / "model"
    with io.atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with io.atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_done_marker_needs_matching_fingerprint(tmp_path):
    io.mark_done(tmp_path, "abc", {"rows": 3})
    assert io.is_done(tmp_path, "abc")
    assert not io.is_done(tmp_path, "abd")
    io.clear_done(tmp_path)
    assert not io.is_done(tmp_path, "abc")


def test_reading_a_missing_stage_output_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the stage that writes it first"):
        io.read_table(tmp_path / "nope.parquet")
