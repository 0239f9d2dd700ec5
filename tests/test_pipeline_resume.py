"""Which stages `--resume` redoes after a change, without Ray: the stage fingerprints of two
configs (a change redoes its stage and every stage after it that reads from it, and nothing
before), and the done check of a stage directory (a marker of other settings, an interrupted
stage without its marker, a truncated Parquet file: each one runs again)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from kdist import storage
from kdist.config import validate_config
from kdist.pipeline import _still_done, stage_fingerprints
from kdist.stages import BY_NAME, STAGE_NAMES

BASE = {
    "teacher": {"kind": "openai", "model": "gpt-teacher", "endpoint": "http://127.0.0.1:9/v1",
                "sampling": {"temperature": 0.0, "max_tokens": 16}},
    "student": {"model": "student-id"},
    "judge": {"kind": "rule", "min_score": 0.8},
}  # fmt: skip


def _config(tmp_path, overrides: dict | None = None, data_file=None):
    raw = json.loads(json.dumps(BASE))
    raw["run"] = {"output_dir": str(tmp_path / "run")}
    if data_file is not None:
        raw["data"] = {"source": {"kind": "jsonl", "path": str(data_file)}, "task": "nli"}
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_config(raw)


def _redone(before, after) -> list[str]:
    old, new = stage_fingerprints(before), stage_fingerprints(after)
    return [name for name in STAGE_NAMES if old[name] != new[name]]


def _downstream(stage: str) -> list[str]:
    """The stage and every stage reading from it, directly or not (from the registry's inputs)."""
    found = {stage}
    for name in STAGE_NAMES:
        if found & set(BY_NAME[name].inputs):
            found.add(name)
    return [name for name in STAGE_NAMES if name in found]


@pytest.mark.parametrize(
    ("change", "first"),
    [
        ({"judge.min_score": 0.6}, "judge"),
        ({"teacher.sampling": {"temperature": 0.7, "max_tokens": 16}}, "generate"),
        ({"teacher.model": "gpt-other"}, "generate"),
        ({"data.sample": {"n": 10, "how": "first"}}, "prepare"),
        ({"train.learning_rate": 1e-3}, "train"),
        ({"evaluate.worst_rows": 3}, "evaluate"),
    ],
)  # fmt: skip
def test_a_change_redoes_its_stage_and_everything_after_it(tmp_path, change, first):
    redone = _redone(_config(tmp_path), _config(tmp_path, change))
    assert redone == _downstream(first)
    assert redone[0] == first


def test_the_judge_threshold_redoes_filter_train_and_evaluate_never_generate(tmp_path):
    redone = _redone(_config(tmp_path), _config(tmp_path, {"judge.min_score": 0.5}))
    assert {"filter", "train", "evaluate"} <= set(redone)
    assert "prepare" not in redone and "generate" not in redone


def test_teacher_sampling_redoes_generate_and_later_never_prepare(tmp_path):
    redone = _redone(_config(tmp_path), _config(tmp_path, {"teacher.sampling": {"temperature": 1.0}}))
    assert redone == ["generate", "judge", "filter", "train", "evaluate"]


def test_settings_that_change_no_output_redo_nothing(tmp_path):
    assert _redone(_config(tmp_path), _config(tmp_path)) == []
    # where the run writes is not a setting of any stage
    assert _redone(_config(tmp_path), _config(tmp_path / "elsewhere")) == []


def test_a_changed_data_file_redoes_every_stage(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"premise": "a", "hypothesis": "b", "label": "neutral"}\n')
    before = stage_fingerprints(_config(tmp_path, data_file=rows))  # as the finished run recorded them
    assert stage_fingerprints(_config(tmp_path, data_file=rows)) == before
    rows.write_text('{"premise": "a", "hypothesis": "b", "label": "entailment"}\n')
    after = stage_fingerprints(_config(tmp_path, data_file=rows))
    assert [name for name in STAGE_NAMES if before[name] != after[name]] == list(STAGE_NAMES)


def test_a_judge_retrained_in_place_redoes_the_evaluation_that_asks_it(tmp_path):
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "model.safetensors").write_bytes(b"weights of the first training")
    config = _config(tmp_path, {"evaluate.judge": {"kind": "hf", "model": str(judge)}})
    before = stage_fingerprints(config)
    (judge / "model.safetensors").write_bytes(b"weights of a longer training")
    after = stage_fingerprints(config)
    assert [name for name in STAGE_NAMES if before[name] != after[name]] == ["evaluate"]


def test_a_template_counts_by_its_text_not_its_place(tmp_path):
    """An edit of the judge's template in place redoes what asks the judge; the same file in
    another place (a Ray job's working dir is a copy of the checkout) redoes nothing."""
    here, copy = tmp_path / "checkout" / "pairwise.j2", tmp_path / "job_dir" / "pairwise.j2"
    for path in (here, copy):
        path.parent.mkdir()
        path.write_text("[A] {{ answer_a }} [B] {{ answer_b }} {{ question }}")

    def judged_with(template):
        return _config(tmp_path, {"evaluate.judge": {"kind": "hf", "model": "judge-id", "template": str(template)}})

    before = stage_fingerprints(judged_with(here))
    assert stage_fingerprints(judged_with(copy)) == before
    here.write_text("[A] {{ answer_a }} [B] {{ answer_b }} {{ question }} Reply A, B or tie.")
    after = stage_fingerprints(judged_with(here))
    assert [name for name in STAGE_NAMES if before[name] != after[name]] == ["evaluate"]


def _stage_dir(tmp_path, name="judge") -> str:
    directory = str(tmp_path / name)
    storage.write_table(storage.join(directory, "scores", "part-0.parquet"), pa.table({"x": [1, 2, 3]}))
    return directory


def test_a_stage_is_skipped_only_with_its_marker_of_the_same_fingerprint(tmp_path):
    directory = _stage_dir(tmp_path)
    assert not _still_done("judge", directory, "f1")  # never finished
    storage.mark_done(directory, "f1", {"rows": 3})
    assert _still_done("judge", directory, "f1")
    assert not _still_done("judge", directory, "f2")  # finished under other settings


def test_an_interrupted_stage_runs_again(tmp_path):
    """run_stages removes a non-atomic stage's marker before it starts: a stage killed after
    writing part of its output has no marker, so the next --resume redoes it."""
    directory = _stage_dir(tmp_path)
    storage.mark_done(directory, "f1", {"rows": 3})
    storage.clear_done(directory)  # what run_stages does as the stage starts again
    storage.write_table(storage.join(directory, "scores", "part-1.parquet"), pa.table({"x": [4]}))
    assert not _still_done("judge", directory, "f1")
    assert [stage.name for stage in BY_NAME.values() if stage.atomic] == ["prepare"]


def test_a_truncated_parquet_file_makes_a_finished_stage_run_again(tmp_path, caplog):
    directory = _stage_dir(tmp_path)
    storage.mark_done(directory, "f1", {"rows": 3})
    part = tmp_path / "judge" / "scores" / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:-12])
    assert not _still_done("judge", directory, "f1")
    assert "part-0.parquet is truncated or corrupt" in caplog.text
