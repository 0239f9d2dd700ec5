"""The openai and azure backends against the fake endpoint on loopback (real HTTP).

Both must turn every request into exactly one response, retry transient faults (and only
those), honour Retry-After, keep to their concurrency, and never call twice for a permanent
failure. The server's per-content request counts are the ground truth for attempts.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from kdist.endpoints import AzureEndpoint, OpenAIEndpoint
from kdist.llm.azure import AzureBackend
from kdist.llm.openai import OpenAIBackend
from kdist.llm.remote import error_reason
from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings, message_key

BACKENDS = {"openai": OpenAIBackend, "azure": AzureBackend}
ENDPOINTS = {"openai": OpenAIEndpoint, "azure": AzureEndpoint}


def make_teacher(kind: str, server: LLMServer, **fields):
    # Without a key the azure backend uses Entra ID, which azure-core allows only over https.
    fields.setdefault("api_key_env", "TEST_TEACHER_KEY")
    endpoint = server.openai_base_url if kind == "openai" else server.base_url
    defaults = dict(backoff_initial_s=0.01, backoff_max_s=0.2, timeout_s=5.0, concurrency=16)
    config = ENDPOINTS[kind](model="test-model", endpoint=endpoint, **{**defaults, **fields})
    return BACKENDS[kind](config)


@pytest.fixture(params=sorted(BACKENDS))
def kind(request, monkeypatch) -> str:
    monkeypatch.setenv("TEST_TEACHER_KEY", "any")  # the fault-free server checks no key
    return request.param


def test_fault_mix_every_row_answered_once_transients_retried_permanents_not(kind, make_requests, monkeypatch):
    plan = FaultPlan(
        transient={"rate_limit": 0.1, "server_error": 0.05, "unavailable": 0.05, "reset": 0.05, "malformed": 0.05},
        permanent={"content_filter": 0.05, "bad_request": 0.03, "unauthorized": 0.02},
        retry_after_s=0.02,
        seed=3,
    )
    monkeypatch.setenv("TEST_TEACHER_KEY", "s3cret")
    requests = make_requests(300)
    with LLMServer(ServerSettings(faults=plan, api_key="s3cret")) as server:
        teacher = make_teacher(kind, server, api_key_env="TEST_TEACHER_KEY")
        responses = teacher.generate(requests)
        teacher.close()
        counts = server.stats()["requests"]

    assert [r.id for r in responses] == [r.id for r in requests]
    expected_permanent = {"content_filter": "content_filter", "bad_request": "bad_request", "unauthorized": "auth"}
    for request, response in zip(requests, responses):
        key = message_key(request.messages)
        fault = plan.fault_for(key, 1)
        assert counts[key] == response.attempts, request.id
        if fault in expected_permanent:
            assert error_reason(response.error) == expected_permanent[fault]
            assert response.attempts == 1 and response.status in (400, 401)
        else:
            assert response.error is None, (request.id, response.error)
            assert response.attempts == plan.failing_attempts(key) + 1
            assert response.response in {"A", "B", "C"} and response.completion_tokens == 1
    retried = sum(1 for r in responses if r.attempts > 1)
    assert retried > 50  # the mix really exercised the retry path


def test_concurrency_is_bounded_and_reached(kind, make_requests):
    with LLMServer(ServerSettings(latency_s=0.05)) as server:
        teacher = make_teacher(kind, server, concurrency=8)
        start = time.monotonic()
        responses = teacher.generate(make_requests(80))
        elapsed = time.monotonic() - start
        teacher.close()
        assert server.stats()["max_in_flight"] == 8
    assert all(r.error is None for r in responses)
    assert elapsed < 80 * 0.05  # faster than one at a time (loose: the CI machine is shared)


def test_retry_after_is_honoured(kind, make_requests):
    plan = FaultPlan(transient={"rate_limit": 1.0}, max_consecutive=1, retry_after_s=0.4)
    with LLMServer(ServerSettings(faults=plan)) as server:
        teacher = make_teacher(kind, server)
        start = time.monotonic()
        [response] = teacher.generate(make_requests(1))
        elapsed = time.monotonic() - start
        teacher.close()
    assert response.error is None and response.attempts == 2
    assert elapsed >= 0.4  # backoff alone (10 ms) would have been much shorter


def test_timeout_then_success_and_exhausted_retries_become_error_rows(kind, make_requests):
    # A 1 s timeout, not less: with 0.3 s the answered retry itself timed out once when the
    # fast tier ran on 2 busy cores (3 attempts).
    timeouts = FaultPlan(transient={"timeout": 1.0}, max_consecutive=1, hang_s=1.5)
    with LLMServer(ServerSettings(faults=timeouts)) as server:
        teacher = make_teacher(kind, server, timeout_s=1.0)
        [response] = teacher.generate(make_requests(1))
        teacher.close()
    assert response.error is None and response.attempts == 2

    always = FaultPlan(transient={"unavailable": 1.0}, max_consecutive=50)
    with LLMServer(ServerSettings(faults=always)) as server:
        teacher = make_teacher(kind, server, max_attempts=3)
        responses = teacher.generate(make_requests(4))
        teacher.close()
        assert server.stats()["total"] == 12
    assert Counter(error_reason(r.error) for r in responses) == {"server_error": 4}
    assert {(r.status, r.attempts) for r in responses} == {(503, 3)}


def test_top_logprobs_are_stored_as_token_ids(kind, make_requests, llm_server):
    teacher = make_teacher(
        kind, llm_server, sampling={"top_logprobs": 3}, request_extras={"return_tokens_as_token_ids": True}
    )
    [response] = teacher.generate(make_requests(1))
    teacher.close()
    [step] = response.top_logprobs
    assert len(step["token_ids"]) == 3 and all(isinstance(t, int) for t in step["token_ids"])
    assert step["logprobs"] == sorted(step["logprobs"], reverse=True)


def test_unset_key_variable_is_a_setup_error(kind, llm_server, monkeypatch):
    monkeypatch.delenv("KDIST_NO_SUCH_KEY", raising=False)
    with pytest.raises(RuntimeError, match="KDIST_NO_SUCH_KEY"):
        make_teacher(kind, llm_server, api_key_env="KDIST_NO_SUCH_KEY")


def test_the_key_never_appears_in_error_rows(kind, make_requests, monkeypatch):
    monkeypatch.setenv("TEST_TEACHER_KEY", "wrong-key-123")
    with LLMServer(ServerSettings(api_key="right")) as server:
        teacher = make_teacher(kind, server, api_key_env="TEST_TEACHER_KEY")
        [response] = teacher.generate(make_requests(1))
        teacher.close()
    assert error_reason(response.error) == "auth" and response.attempts == 1
    assert "wrong-key-123" not in str(response.to_row())
