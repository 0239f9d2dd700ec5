"""A whole run whose output_dir is an object store (a loopback S3 server): every stage reads
and writes there, then `--resume` redoes exactly the stages downstream of a change."""

from __future__ import annotations

import json

import pytest

from kdist import pipeline, storage
from kdist.config import validate_config
from kdist.runtime import ray_session
from kdist.testing.llm_server import LLMServer, ServerSettings, deterministic_answer

pytestmark = pytest.mark.slow


def _config(output_dir: str, server: LLMServer, student: str, **changes):
    raw = {
        "run": {"output_dir": output_dir, "name": "s3-run"},
        "runtime": {"num_cpus": 2, "log_to_driver": False},
        "data": {"source": {"kind": "synthetic_mc", "teacher_train": 0, "train": 64, "validation": 16, "test": 16}},
        "teacher": {"kind": "openai", "model": "m", "endpoint": server.openai_base_url, "concurrency": 8, "batch_size": 16,
                    "sampling": {"max_tokens": 4, **changes.get("sampling", {})}},
        "judge": {"kind": "rule", "min_score": changes.get("min_score", 1.0)},
        "student": {"model": student},
        "train": {"method": "lora", "num_workers": 2, "zero_stage": 2, "batch_size": 8, "max_steps": 2, "eval_every": 2,
                  "max_seq_len": 64, "warmup_steps": 1},
        "evaluate": {"kind": "hf", "batch_size": 16, "sampling": {"max_tokens": 4}},
    }  # fmt: skip
    return validate_config(raw)


def _test_prompts(root: str) -> list[dict]:
    return [row for row in storage.read_table(storage.join(root, "prompts")).to_pylist() if row["split"] == "test"]


def _skipped(caplog) -> list[str]:
    return [r.getMessage().split()[1].rstrip(":") for r in caplog.records if "skipped (--resume)" in r.getMessage()]


def test_a_run_on_object_storage_resumes_exactly(s3_bucket, tiny_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KDIST_MODEL_CACHE", str(tmp_path / "model-cache"))
    root = f"{s3_bucket}/runs/one"
    # One Ray for the three runs (each would start and stop its own: about 10 s apiece on 2 cores).
    with LLMServer(ServerSettings()) as server, ray_session(_config(root, server, str(tiny_model_dir))):
        assert pipeline.run_stages(_config(root, server, str(tiny_model_dir)), pipeline.STAGE_NAMES) == 0
        asked_once = dict(server.stats()["requests"])
        for stage in pipeline.STAGE_NAMES:
            assert storage.exists(storage.join(root, pipeline.BY_NAME[stage].output, storage.SUCCESS_FILE)), stage
        assert storage.count_rows(storage.join(root, "prompts")) == 96
        assert storage.count_rows(storage.join(root, "sft", "train")) == 64
        assert storage.exists(storage.join(root, "student", "model", "config.json"))
        metrics = storage.read_json(storage.join(root, "eval", "metrics.json"))
        assert set(metrics["accuracy"]) == {"base", "student", "teacher"} and metrics["rows"] == 16
        # The teacher's accuracy is that of the answers the loopback server gave (a letter
        # fixed per prompt), read back from S3 and scored against the references.
        results = storage.read_table(storage.join(root, "eval", "results.parquet")).to_pylist()
        teacher = [row for row in results if row["model"] == "teacher"]
        expected = sum(deterministic_answer(p["messages"]) == p["reference"] for p in _test_prompts(root)) / 16
        assert len(results) == 48 and len(teacher) == 16
        assert metrics["accuracy"]["teacher"] == pytest.approx(expected, abs=1e-4)

        # A stricter judge: judge and filter and what reads them are redone, nobody asked again.
        caplog.set_level("INFO")
        changed = _config(root, server, str(tiny_model_dir), min_score=0.5)
        pipeline.run_stages(changed, ["prepare", "generate", "judge", "filter"], resume=True)
        assert _skipped(caplog) == ["prepare", "generate"]
        assert server.stats()["requests"] == asked_once

        # The teacher samples otherwise: every prompt is asked again, once.
        caplog.clear()
        resampled = _config(root, server, str(tiny_model_dir), sampling={"temperature": 0.5})
        pipeline.run_stages(resampled, ["prepare", "generate"], resume=True)
        assert _skipped(caplog) == ["prepare"]
        again = server.stats()["requests"]
        assert all(again[key] == 2 for key in asked_once)
    summary = json.loads(storage.read_text(storage.join(root, "responses", "summary.json")))
    assert summary["this_run"]["requested"] == 96 and summary["done"] == 96
