"""The hosted fine-tuning backend (kdist.train.hosted) end to end against the loopback
server's files and fine-tuning routes: what goes up, the job's settings, the model it leaves
for evaluate, nothing uploaded or created twice across a SIGKILL, and one-line failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pyarrow as pa
import pytest

from kdist import preflight, storage
from kdist.config import ConfigError, EvaluatedModel, validate_config
from kdist.errors import UsageError
from kdist.export import chat_jsonl, chat_record
from kdist.rows import SFT_SCHEMA
from kdist.stages import StageContext
from kdist.stages import train as train_stage
from kdist.stages.evaluate import model_endpoint
from kdist.testing.fine_tuning_api import FineTuningSettings
from kdist.testing.llm_server import LLMServer, ServerSettings
from kdist.train.hosted import JOB_FILE, MODEL_FILE

KEY_ENV = "KDIST_TEST_FT_KEY"
KEY = "sk-finetune-secret-9191"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _server(**fine_tuning) -> LLMServer:
    return LLMServer(ServerSettings(api_key=KEY, fine_tuning=FineTuningSettings(**{"phase_s": 0.1, **fine_tuning})))


def _rows(split: str, n: int) -> list[dict]:
    return [
        {"id": f"{split}-{i:03d}", "top_logprobs": None, "messages": [
            {"role": "user", "content": f"Question {i} of {split}: A, B or C?"},
            {"role": "assistant", "content": "ABC"[i % 3]},
        ]}
        for i in range(n)
    ]  # fmt: skip


def _config(tmp_path: Path, server: LLMServer, **hosted):
    raw = {
        "run": {"name": "ft", "output_dir": str(tmp_path / "run"), "seed": 7},
        "teacher": {"kind": "hf", "model": "teacher"}, "student": {"model": "student"},
        "train": {"backend": "hosted", "hosted": {
            "base_model": "gpt-4o-mini-2024-07-18", "endpoint": server.openai_base_url, "api_key_env": KEY_ENV,
            "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "suffix": "kdist-mc",
            "poll_initial_s": 0.02, "poll_max_s": 0.1, **hosted,
        }},
    }  # fmt: skip
    config = validate_config(raw)
    context = StageContext(config, config.run.output_dir)
    for split, n in (("train", 12), ("validation", 4)):
        # Shards in another order than the ids: what goes up must not depend on it.
        rows = _rows(split, n)
        storage.write_table(storage.join(context.dir("filter"), split, "part-b.parquet"), pa.Table.from_pylist(rows[: n // 2], SFT_SCHEMA))
        storage.write_table(storage.join(context.dir("filter"), split, "part-a.parquet"), pa.Table.from_pylist(rows[n // 2 :], SFT_SCHEMA))
    (tmp_path / "config.yaml").write_text(json.dumps(raw))
    return context


def _client(server: LLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0)


def test_a_job_fine_tunes_on_the_filtered_sets_and_its_model_answers_for_evaluate(tmp_path):
    with _server() as server:
        context = _config(tmp_path, server)
        result = train_stage.run(context)
        stats = server.stats()["files"], server.stats()["fine_tuning"]
        client = _client(server)
        job = client.fine_tuning.jobs.retrieve(result["job_id"])
        uploaded = {f.filename.rsplit("-", 1)[-1]: client.files.content(f.id).text for f in client.files.list(purpose="fine-tune")}

        # The chat JSONL of kdist export, rows in id order, both sets; one job with our settings.
        assert uploaded == {f"{split}.jsonl": chat_jsonl([chat_record(r["messages"]) for r in _rows(split, n)])
                            for split, n in (("train", 12), ("validation", 4))}  # fmt: skip
        assert stats[0]["uploads"] == 2 and stats[1]["created"] == 1
        assert (job.model, job.seed, job.user_provided_suffix) == ("gpt-4o-mini-2024-07-18", 7, "kdist-mc")
        assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size, job.hyperparameters.learning_rate_multiplier) == (2, 4, 0.5)
        assert job.validation_file is not None and job.status == "succeeded"

        # The model name, for evaluate's model_file; it answers on the server, unknown ft: names do not.
        saved = storage.read_json(storage.join(context.dir("train"), MODEL_FILE))
        assert saved["model"] == job.fine_tuned_model and saved["model"].startswith("ft:gpt-4o-mini-2024-07-18:")
        assert saved["trained_tokens"] == job.trained_tokens > 0
        evaluated = EvaluatedModel.model_validate({"name": "hosted", "model_file": MODEL_FILE, "endpoint": {
            "kind": "openai", "endpoint": server.openai_base_url, "api_key_env": KEY_ENV}})  # fmt: skip
        endpoint = model_endpoint(context, evaluated)
        assert endpoint.model == saved["model"]
        reply = client.chat.completions.create(model=endpoint.model, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=saved["model"] + "x", messages=[{"role": "user", "content": "hi"}])


def test_a_sigkill_after_create_then_a_restart_finds_the_job_instead_of_making_another(tmp_path):
    with _server(phase_s=0.5) as server:
        context = _config(tmp_path, server)
        script = ("import json, sys; from kdist.config import validate_config; from kdist.stages import StageContext, train; "
                  "c = validate_config(json.load(open(sys.argv[1]))); train.run(StageContext(c, c.run.output_dir))")  # fmt: skip
        child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "config.yaml")], cwd=ROOT,
                                 env={**os.environ, KEY_ENV: KEY})  # fmt: skip
        deadline = time.monotonic() + 60
        while server.stats()["fine_tuning"]["created"] == 0 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed = server.stats()["fine_tuning"]
        assert killed["created"] == 1 and "succeeded" not in killed["statuses"]  # killed while it ran

        result = train_stage.run(context)  # the restart
        assert server.stats()["files"]["uploads"] == 2
        assert server.stats()["fine_tuning"]["created"] == 1
        assert storage.read_json(storage.join(context.dir("train"), MODEL_FILE))["job_id"] == result["job_id"]


def test_a_crash_before_the_ids_were_recorded_finds_the_files_by_name_and_the_job_by_its_file(tmp_path):
    with _server() as server:
        context = _config(tmp_path, server)
        first = train_stage.run(context)
        # The record as a crash right after the upload and create calls leaves it.
        record_path = storage.join(context.dir("train"), JOB_FILE)
        record = storage.read_json(record_path)
        storage.write_json(record_path, {**record, "train_file_id": None, "validation_file_id": None, "job_id": None, "status": "new"})
        again = train_stage.run(context)
        assert again["job_id"] == first["job_id"] and again["model"] == first["model"]
        assert server.stats()["files"]["uploads"] == 2 and server.stats()["fine_tuning"]["created"] == 1


def test_changed_training_data_makes_a_new_job(tmp_path):
    with _server() as server:
        context = _config(tmp_path, server)
        first = train_stage.run(context)
        rows = _rows("train", 3)
        storage.write_table(storage.join(context.dir("filter"), "train", "part-c.parquet"), pa.Table.from_pylist(rows, SFT_SCHEMA))
        second = train_stage.run(context)
        assert second["job_id"] != first["job_id"]
        assert server.stats()["fine_tuning"]["created"] == 2 and server.stats()["files"]["uploads"] == 4


def test_a_failed_job_ends_the_stage_in_one_line_with_the_providers_error_scrubbed(tmp_path):
    with _server(fail_first=1, fail_message=f"Training failed: key {KEY} hit a diverging loss.") as server:
        context = _config(tmp_path, server)
        with pytest.raises(UsageError) as failed:
            train_stage.run(context)
        message = str(failed.value)
        assert message.startswith("fine-tuning job ftjob-") and " failed: Training failed: key " in message
        assert KEY not in message and "***" in message and "\n" not in message
        assert not storage.exists(storage.join(context.dir("train"), MODEL_FILE))
        assert KEY not in storage.read_text(storage.join(context.dir("train"), JOB_FILE))


def test_a_job_cancelled_on_the_service_ends_the_stage_in_one_line(tmp_path):
    with _server(phase_s=0.5) as server, ThreadPoolExecutor(1) as pool:
        context = _config(tmp_path, server)
        running = pool.submit(train_stage.run, context)
        deadline = time.monotonic() + 30
        while server.stats()["fine_tuning"]["created"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        job = _client(server).fine_tuning.jobs.list().data[0]
        assert _client(server).fine_tuning.jobs.cancel(job.id).status == "cancelled"
        with pytest.raises(UsageError, match=rf"^fine-tuning job {job.id} cancelled: no error given$"):
            running.result(timeout=30)
        assert server.stats()["fine_tuning"]["cancelled"] == 1


def test_azure_openai_fine_tunes_through_its_routes(tmp_path):
    with _server() as server:
        context = _config(tmp_path, server, kind="azure", endpoint=server.base_url, api_version="2025-04-01-preview")
        result = train_stage.run(context)
        assert result["provider"] == "azure" and result["model"].startswith("ft:")
        assert server.stats()["fine_tuning"]["created"] == 1


def test_an_unset_key_variable_is_a_one_line_error_before_any_work(tmp_path, monkeypatch):
    with _server() as server:
        context = _config(tmp_path, server, base_model="gpt-4o-mini")
        for upstream in ("prepare", "filter"):
            storage.mark_done(context.dir(upstream), "done", {})
        preflight.check_run(context, ["train"])  # the key is set; student.model is not needed
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(UsageError, match=rf"^train\.hosted\.api_key_env names {KEY_ENV}, which is not set in this environment"):
            preflight.check_run(context, ["train"])
        with pytest.raises(UsageError, match=rf"^train\.hosted\.api_key_env names {KEY_ENV}, which is not set$"):
            train_stage.run(context)
        assert server.stats()["files"]["uploads"] == 0


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"backend": "hosted"}, "'train': Value error, backend hosted needs a train.hosted section"),
        ({"hosted": {"base_model": "m"}}, "'train': Value error, train.hosted is used only with backend hosted"),
        ({"backend": "hosted", "hosted": {"kind": "azure", "base_model": "m"}}, "'train.hosted': Value error, kind azure needs api_version"),
        ({"backend": "hosted", "hosted": {"base_model": "m", "api_version": "2025-04-01-preview"}}, "api_version is for kind azure"),
        ({"backend": "hosted", "hosted": {"base_model": "m", "n_epochs": 0}}, "'train.hosted.n_epochs': Input should be greater than or equal to 1"),
        ({"backend": "hosted", "hosted": {"base_model": "m", "suffix": "has space"}}, "'train.hosted.suffix': String should match pattern"),
        ({"backend": "hosted", "hosted": {"base_model": "m", "epochs": 3}}, "unknown key 'train.hosted.epochs' (did you mean 'n_epochs'?)"),
        ({"backend": "cloud"}, "'train.backend'"),
    ],
)
def test_config_errors_name_the_field(train, message):
    with pytest.raises(ConfigError) as err:
        validate_config({"teacher": {"model": "t"}, "student": {"model": "s"}, "train": train})
    assert message in str(err.value) and "\n" not in str(err.value)
