"""What a run checks before Ray starts (kdist.preflight), and what --resume trusts: the
fingerprints of the files a stage reads, and readable Parquet in a stage it skips."""

import json
import logging
import tempfile

import pytest
import yaml

from kdist import pipeline, storage
from kdist.cli import main
from kdist.config import validate_config

BASE = {"teacher": {"model": "t"}, "student": {"model": "s"}}


@pytest.fixture
def ray_temp_root(tmp_path, monkeypatch):
    """Where a local Ray would make its kdist-ray-* temp dir during the test."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def run_cli(tmp_path, capsys, config: dict, *argv: str) -> tuple[int, str]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main([*argv, "-c", str(path)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return code, err


def jsonl_source(path, rows: int) -> dict:
    path.write_text("".join(
        json.dumps({"id": f"q{i}", "question": f"Which is {i}?", "choices": ["a", "b"], "answer": "a",
                    "split": "train"}) + "\n"
        for i in range(rows)
    ))  # fmt: skip
    return {"kind": "jsonl", "path": str(path)}


@pytest.mark.parametrize(
    ("change", "argv", "message"),
    [
        ({"run": {"output_dir": "FILE/run"}}, ["run"], "run.output_dir: {tmp}/FILE/run cannot be created, {tmp}/FILE is a file"),
        ({}, ["generate"], "generate reads the output of stage prepare ({tmp}/out/prompts), which has not run there"),
        ({"student": {"model": "{tmp}/no/such/student"}}, ["run"], "student.model: {tmp}/no/such/student does not exist"),
        ({"data": {"source": {"kind": "jsonl", "path": "{tmp}/missing.jsonl"}}}, ["prepare"],
         "data.source.path: {tmp}/missing.jsonl does not exist; expected a local path or a URI"),
        ({"data": {"source": {"kind": "hf", "path": "json", "data_files": "missing-rows.jsonl"}}}, ["prepare"],
         "data.source.data_files[0]: missing-rows.jsonl does not exist; expected a local path or a URI"),
        ({"teacher": {"kind": "openai", "model": "m", "endpoint": "http://127.0.0.1:9/v1",
                      "api_key_env": "KDIST_TEST_UNSET_KEY"}}, ["run"],
         "teacher.api_key_env names KDIST_TEST_UNSET_KEY, which is not set in this environment"),
    ],
)  # fmt: skip
def test_bad_inputs_fail_in_one_line_before_ray_starts(tmp_path, capsys, ray_temp_root, monkeypatch, change, argv, message):
    monkeypatch.delenv("KDIST_TEST_UNSET_KEY", raising=False)
    (tmp_path / "FILE").write_text("a regular file")
    tmp = str(tmp_path)
    config = {**BASE, "run": {"output_dir": f"{tmp}/out"}}
    for section, values in change.items():
        config[section] = json.loads(json.dumps(values).replace("{tmp}", tmp).replace("FILE", f"{tmp}/FILE"))
    code, err = run_cli(tmp_path, capsys, config, *argv)
    assert code == 2
    assert message.format(tmp=tmp) in err
    assert list(ray_temp_root.iterdir()) == [], "Ray was started before the checks"


def test_a_hub_id_is_a_model_but_not_a_data_file():
    from kdist.preflight import check_location
    from kdist.errors import UsageError

    check_location("student.model", "Qwen/Qwen2.5-0.5B-Instruct", hub_id_allowed=True)
    with pytest.raises(UsageError, match="data.source.path: rows.jsonl does not exist"):
        check_location("data.source.path", "rows.jsonl", hub_id_allowed=False)


@pytest.mark.usefixtures("local_ray")
def test_resume_redoes_prepare_when_the_data_file_changed(tmp_path):
    source = jsonl_source(tmp_path / "rows.jsonl", 20)
    config = validate_config({**BASE, "data": {"source": source}, "run": {"output_dir": str(tmp_path / "out")}})
    pipeline.run_stages(config, ["prepare"])
    prompts = str(tmp_path / "out" / "prompts")
    assert storage.count_rows(prompts) == 20
    jsonl_source(tmp_path / "rows.jsonl", 5)  # the same path, fewer rows
    pipeline.run_stages(config, ["prepare"], resume=True)
    assert storage.count_rows(prompts) == 5


@pytest.mark.usefixtures("local_ray")
def test_resume_runs_a_stage_again_when_one_of_its_files_is_corrupt(tmp_path, caplog):
    source = jsonl_source(tmp_path / "rows.jsonl", 12)
    config = validate_config({**BASE, "data": {"source": source}, "run": {"output_dir": str(tmp_path / "out")}})
    pipeline.run_stages(config, ["prepare"])
    prompts = tmp_path / "out" / "prompts"
    shard = next(prompts.glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-20])  # truncated: the footer is gone
    with caplog.at_level(logging.WARNING):
        pipeline.run_stages(config, ["prepare"], resume=True)
    assert f"{shard} is truncated or corrupt; the stage runs again" in caplog.text
    assert storage.count_rows(str(prompts)) == 12


@pytest.mark.usefixtures("local_ray")
def test_a_failed_rerun_keeps_the_saved_config_and_the_marker_of_an_atomic_stage(tmp_path):
    source = jsonl_source(tmp_path / "rows.jsonl", 6)
    out = tmp_path / "out"
    good = validate_config({**BASE, "data": {"source": source}, "run": {"output_dir": str(out)}})
    pipeline.run_stages(good, ["prepare"])
    saved, marker = (out / "config.yaml").read_text(), (out / "prompts" / storage.SUCCESS_FILE).read_text()
    (tmp_path / "bad.jsonl").write_text('{"id": "q1", "question": "Q?", "choices": ["a"]\n')  # malformed
    bad = validate_config({**BASE, "data": {"source": {**source, "path": str(tmp_path / "bad.jsonl")}},
                           "run": {"output_dir": str(out)}})  # fmt: skip
    with pytest.raises(Exception):
        pipeline.run_stages(bad, ["prepare"])
    assert (out / "config.yaml").read_text() == saved
    assert (out / "prompts" / storage.SUCCESS_FILE).read_text() == marker
    assert storage.count_rows(str(out / "prompts")) == 6

