"""The fake endpoint itself: faults are deterministic per row and attempt, counts are exact."""

from __future__ import annotations

import httpx
import pytest

from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings, deterministic_answer, message_key


def _post(server: LLMServer, content: str, **body) -> httpx.Response:
    messages = [{"role": "user", "content": content}]
    return httpx.post(server.openai_base_url + "/chat/completions", json={"model": "m", "messages": messages, **body}, timeout=5)


def test_answers_multiple_choice_with_one_of_its_letters_and_reports_usage(llm_server):
    reply = _post(llm_server, "Which is a fruit? A) apple B) car C) dog Answer with the letter only.")
    body = reply.json()
    assert reply.status_code == 200
    assert body["choices"][0]["message"]["content"] in {"A", "B", "C"}
    assert body["usage"]["completion_tokens"] == 1
    assert body["usage"]["prompt_tokens"] == 15  # words of the prompt


def test_logprobs_as_token_ids_when_asked(llm_server):
    body = _post(llm_server, "Pick: A) x B) y", logprobs=True, top_logprobs=3, return_tokens_as_token_ids=True).json()
    step = body["choices"][0]["logprobs"]["content"][0]
    assert len(step["top_logprobs"]) == 3
    assert all(alt["token"].startswith("token_id:") for alt in step["top_logprobs"])


def test_azure_route_needs_api_version_and_key():
    with LLMServer(ServerSettings(api_key="k")) as server:
        url = server.base_url + "/chat/completions"
        body = {"messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(url, json=body, headers={"api-key": "k"}).status_code == 400
        assert httpx.post(url + "?api-version=2024-05-01-preview", json=body, headers={"api-key": "bad"}).status_code == 401
        assert httpx.post(url + "?api-version=2024-05-01-preview", json=body, headers={"api-key": "k"}).status_code == 200


def test_transient_fault_fails_first_attempts_then_succeeds_and_counts_requests():
    plan = FaultPlan(transient={"rate_limit": 1.0}, max_consecutive=2, retry_after_s=0.25)
    with LLMServer(ServerSettings(faults=plan)) as server:
        content = "Pick one. A) a B) b"
        failing = plan.failing_attempts(message_key([{"role": "user", "content": content}]))
        assert failing in (1, 2)
        for _ in range(failing):
            reply = _post(server, content)
            assert reply.status_code == 429
            assert reply.headers["retry-after-ms"] == "250"
            assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert _post(server, content).status_code == 200
        assert server.requests_for([{"role": "user", "content": content}]) == failing + 1


def test_permanent_faults_repeat_and_rates_pick_about_the_right_share():
    plan = FaultPlan(permanent={"content_filter": 0.2}, transient={"server_error": 0.3}, seed=7)
    keys = [message_key([{"role": "user", "content": f"q{i}"}]) for i in range(2000)]
    permanent = [k for k in keys if plan.fault_for(k, 99) == "content_filter"]
    transient = [k for k in keys if plan.fault_for(k, 1) == "server_error"]
    assert 0.17 < len(permanent) / len(keys) < 0.23
    assert 0.27 < len(transient) / len(keys) < 0.33
    assert all(plan.fault_for(k, 3) is None for k in transient)  # max_consecutive=2


@pytest.mark.parametrize("fault", ["reset", "malformed"])
def test_broken_replies_are_really_broken(fault):
    with LLMServer(ServerSettings(faults=FaultPlan(transient={fault: 1.0}, max_consecutive=1))) as server:
        if fault == "reset":
            with pytest.raises(httpx.RemoteProtocolError):
                _post(server, "hello")
        else:
            with pytest.raises(ValueError):
                _post(server, "hello").json()


def test_subprocess_mode_serves_and_reports_stats():
    with LLMServer(ServerSettings(latency_s=0.01), in_subprocess=True) as server:
        assert _post(server, "hello there").json()["choices"][0]["message"]["content"] == "ok: hello there"
        assert server.stats()["total"] == 1


def test_unknown_fault_kind_is_refused():
    with pytest.raises(ValueError, match="unknown fault kinds"):
        FaultPlan(transient={"gremlins": 0.1})


def test_non_mc_prompt_gets_an_echo():
    assert deterministic_answer([{"role": "user", "content": "say hi"}]) == "ok: say hi"
