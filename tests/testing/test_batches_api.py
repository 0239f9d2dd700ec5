"""The loopback server's batches routes, driven by the official openai client: statuses on
the clock, output and error files in the provider's format, a batch that expires half done,
validation failures, cancel, the Azure paths."""

from __future__ import annotations

import json
import time

import openai
import pytest

from kdist.testing.batches_api import BatchSettings
from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings, message_key


def _lines(count: int, url: str = "/v1/chat/completions") -> bytes:
    rows = [
        {"custom_id": f"r{i}", "method": "POST", "url": url,
         "body": {"model": "m", "messages": [{"role": "user", "content": f"Q{i}: A) x B) y"}], "max_tokens": 4}}
        for i in range(count)
    ]  # fmt: skip
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _wait(client: openai.OpenAI, batch_id: str) -> tuple[list[str], openai.types.Batch]:
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return seen, batch
        time.sleep(0.02)
    raise AssertionError(f"batch stuck in {seen}")


def _read(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()] if file_id else []


def test_a_batch_runs_through_its_statuses_and_answers_each_request_once():
    plan = FaultPlan(permanent={"content_filter": 0.2}, transient={"server_error": 0.3}, seed=3)
    with LLMServer(ServerSettings(faults=plan, batches=BatchSettings(phase_s=0.15))) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0)
        upload = client.files.create(file=("in.jsonl", _lines(40)), purpose="batch")
        created = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                                        metadata={"kdist_chunk": "c1"})  # fmt: skip
        statuses, batch = _wait(client, created.id)
        assert created.status == "validating" and statuses[-1] == "completed"
        assert set(statuses) <= {"validating", "in_progress", "finalizing", "completed"}
        # Each status has its time, in order (a slow poll may see only the last of them).
        assert created.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
        output, errors = _read(client, batch.output_file_id), _read(client, batch.error_file_id)
        refused = {f"r{i}" for i in range(40) if plan.fault_for(message_key([{"role": "user", "content": f"Q{i}: A) x B) y"}]), 99)}
        assert refused and {e["custom_id"] for e in errors} == refused
        assert all(e["response"]["status_code"] == 400 for e in errors)
        assert len(output) == 40 - len(refused) and all(o["response"]["body"]["choices"][0]["message"]["content"] in "AB" for o in output)
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (40, 40 - len(refused), len(refused))
        assert server.stats()["total"] == 40  # transient faults are the provider's to retry
        assert [b.metadata for b in client.batches.list()] == [{"kdist_chunk": "c1"}]


def test_a_batch_that_expires_half_done_keeps_its_answers_and_lists_the_rest_as_expired():
    with LLMServer(ServerSettings(batches=BatchSettings(phase_s=0.05, expire_first=1))) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0)
        upload = client.files.create(file=("in.jsonl", _lines(10)), purpose="batch")
        _, batch = _wait(client, client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id)
        assert batch.status == "expired" and batch.expired_at
        output, errors = _read(client, batch.output_file_id), _read(client, batch.error_file_id)
        assert len(output) == 5 and len(errors) == 5
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}
        assert server.stats()["total"] == 5
        # only the first batch expires
        _, second = _wait(client, client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id)
        assert second.status == "completed"


@pytest.mark.parametrize(
    ("content", "code"),
    [(_lines(3) + _lines(1), "duplicate_custom_id"), (_lines(2, url="/v1/embeddings"), "invalid_request"), (_lines(6), "too_many_requests")],
)
def test_a_batch_that_fails_validation_answers_nothing(content, code):
    with LLMServer(ServerSettings(batches=BatchSettings(phase_s=0.01, max_requests=5))) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0)
        upload = client.files.create(file=("in.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert batch.status == "failed" and batch.errors.data[0].code == code
        assert batch.output_file_id is None and server.stats()["total"] == 0


def test_azure_paths_and_cancel():
    with LLMServer(ServerSettings(api_key="key", batches=BatchSettings(phase_s=30))) as server:
        client = openai.AzureOpenAI(azure_endpoint=server.base_url, api_version="2025-03-01-preview", api_key="key", max_retries=0)
        upload = client.files.create(file=("in.jsonl", _lines(3, url="/chat/completions")), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/chat/completions", completion_window="24h")
        assert client.batches.retrieve(batch.id).status == "validating"
        cancelled = client.batches.cancel(batch.id)
        assert cancelled.status == "cancelled" and cancelled.output_file_id is None
        assert {e["error"]["code"] for e in _read(client, cancelled.error_file_id)} == {"batch_cancelled"}
