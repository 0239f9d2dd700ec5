"""Both HTTP backends against vLLM's real OpenAI-compatible server on CPU (tiny offline model),
and the same server as the writer of a generated source (dialogue augmentation through prepare).

One server for the module: it takes tens of seconds to start on 2 cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest

from kdist.config import RunConfig
from kdist.endpoints import AzureEndpoint, OpenAIEndpoint, RemoteEndpoint
from kdist.llm.azure import AzureBackend
from kdist.llm.openai import OpenAIBackend
from kdist.runtime import ray_session
from kdist.stages import BY_NAME, StageContext

pytestmark = pytest.mark.slow

KEY_ENV = "KDIST_TEST_VLLM_KEY"
SERVER_KEY = "vllm-test-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory) -> Iterator[str]:
    pytest.importorskip("vllm")
    port = _free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model_dir), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port), "--api-key", SERVER_KEY,
        "--max-model-len", "128", "--max-logprobs", "5", "--dtype", "float32",
        # torch.compile of a tiny model is all startup cost (about 35 s of each engine start on 2
        # cores, more on a fresh machine with no compile cache) and no part of what is tested.
        "--enforce-eager",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", process, log_path, timeout_s=240)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_healthy(url: str, process: subprocess.Popen, log_path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vLLM server exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"vLLM server not healthy after {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def _section(kind: str, endpoint: str, **fields) -> RemoteEndpoint:
    return {"openai": OpenAIEndpoint, "azure": AzureEndpoint}[kind](
        model="tiny", endpoint=endpoint, api_key_env=KEY_ENV, concurrency=8, timeout_s=60,
        sampling={"max_tokens": 4, "top_logprobs": 3},
        request_extras={"return_tokens_as_token_ids": True}, **fields,
    )  # fmt: skip


@pytest.mark.parametrize("backend", [OpenAIBackend, AzureBackend], ids=["openai", "azure"])
def test_vllm_server_answers_with_usage_and_token_id_logprobs(backend, vllm_server, make_requests, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SERVER_KEY)
    teacher = backend(_section(backend.kind, vllm_server))
    requests = make_requests(12)
    responses = teacher.generate(requests)
    teacher.close()
    assert [r.id for r in responses] == [r.id for r in requests]
    for response in responses:
        assert response.error is None, response.error
        assert response.attempts == 1 and response.status == 200
        assert response.prompt_tokens > 5 and 1 <= response.completion_tokens <= 4
        assert response.finish_reason in ("stop", "length")
        assert len(response.top_logprobs) == response.completion_tokens
        step = response.top_logprobs[0]
        assert len(step["token_ids"]) == 3 and all(0 <= t < 1000 for t in step["token_ids"])
        assert all(value <= 0.0 for value in step["logprobs"])


@pytest.mark.parametrize("backend", [OpenAIBackend, AzureBackend], ids=["openai", "azure"])
def test_vllm_server_wrong_key_is_an_auth_error_row_not_retried(backend, vllm_server, make_requests, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    teacher = backend(_section(backend.kind, vllm_server))
    [response] = teacher.generate(make_requests(1))
    teacher.close()
    assert response.error.startswith("auth") and response.status == 401 and response.attempts == 1


def test_dialogue_augmentation_with_the_vllm_server_as_writer(vllm_server, tmp_path, monkeypatch):
    """Each conversation asked once through the batch layer and every answer accounted for (a
    random model's follow-ups rarely parse: they are counted, and the originals are kept)."""
    monkeypatch.setenv(KEY_ENV, SERVER_KEY)
    chats = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Question {i}: pick one."},
                                          {"role": "assistant", "content": "A) red"}]} for i in range(12)]  # fmt: skip
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    (tmp_path / "mine.j2").write_text("{% for t in conversation %}{{ t.content }} {% endfor %}Answer with the letter only.")
    writer = {"kind": "openai", "model": "tiny", "endpoint": vllm_server, "api_key_env": KEY_ENV,
              "concurrency": 4, "batch_size": 8, "sampling": {"max_tokens": 8}}  # fmt: skip
    source = {"kind": "dialogue_augmentation", "path": str(tmp_path / "chats.jsonl"), "template": str(tmp_path / "mine.j2"), "writer": writer}
    config = RunConfig(data={"task": "conversation", "source": source}, teacher={"model": "t", "splits": ["train"]},
                       student={"model": "unused"}, runtime={"num_cpus": 2, "log_to_driver": False})  # fmt: skip
    with ray_session(config):
        summary = BY_NAME["prepare"].run(StageContext(config, str(tmp_path / "run")))
    generated = summary["generated"]
    assert generated["items"] == 12 and generated["inference"]["done"] == 12
    assert generated["parsed"] + generated["unparsable"] == 12 and generated["errors"] == 0
    answers = pq.read_table(tmp_path / "run" / "generated" / "answers" / "answers").to_pylist()
    assert sorted(row["id"] for row in answers) == sorted(c["id"] for c in chats)
    assert all(row["model"] == "openai:tiny" and row["candidate"] == "writer" and row["completion_tokens"] >= 1 for row in answers)
    prompts = pq.read_table(tmp_path / "run" / "prompts").to_pylist()
    assert {row["id"] for row in prompts} >= {c["id"] for c in chats}  # the originals, kept
    assert len(prompts) == summary["rows"] == generated["rows"] - summary.get("duplicates_removed", 0)
