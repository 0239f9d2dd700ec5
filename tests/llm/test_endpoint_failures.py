"""Failing endpoints, classified right, through both HTTP backends against real sockets:
a refused connection is `connection` with the address, a refused key stops the worker after
a few answers (and says so in one line, naming the variable, never the key), 501 is never
retried, and stored error text holds no configured secret."""

from __future__ import annotations

import pytest

from kdist.llm.remote import error_reason
from kdist.llm.resilience import KEY_REFUSALS_TO_STOP, KeyRefused
from kdist.llm.scrub import ERROR_CHARS, Scrubber, without_credentials
from kdist.runtime import free_loopback_port
from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings, message_key
from test_remote_backends import BACKENDS, make_teacher

KEY = "sk-live-8f3a9c1d2e"


@pytest.fixture(params=sorted(BACKENDS))
def kind(request, monkeypatch) -> str:
    monkeypatch.setenv("TEST_TEACHER_KEY", KEY)
    return request.param


class _Nowhere:
    """Stands in for a server that is not there: make_teacher only reads its URLs."""

    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.openai_base_url = self.base_url + "/v1"


def test_connection_refused_is_connection_with_the_address(kind, make_requests):
    port = free_loopback_port()  # free, so nothing listens there
    teacher = make_teacher(kind, _Nowhere(port), max_attempts=2)
    [response] = teacher.generate(make_requests(1))
    teacher.close()
    assert response.error == f"connection: connection refused at 127.0.0.1:{port}"
    assert response.attempts == 2  # transient: the server may be starting


def test_a_refused_key_stops_after_a_few_answers_in_one_line(kind, make_requests):
    concurrency = 4
    with LLMServer(ServerSettings(api_key="the-right-key")) as server:
        teacher = make_teacher(kind, server, concurrency=concurrency)
        with pytest.raises(KeyRefused) as refused:
            teacher.generate(make_requests(200))
        teacher.close()
        sent = server.stats()["total"]
    message = str(refused.value)
    assert "\n" not in message and KEY not in message
    assert "$TEST_TEACHER_KEY" in message and f"127.0.0.1:{server.port}" in message and "401" in message
    assert sent <= KEY_REFUSALS_TO_STOP + concurrency  # not 200


def test_403_trips_the_breaker_too_and_one_refusal_is_only_a_row(kind, make_requests):
    with LLMServer(ServerSettings(faults=FaultPlan(permanent={"forbidden": 1.0}))) as server:
        teacher = make_teacher(kind, server, concurrency=2)
        with pytest.raises(KeyRefused, match="403"):
            teacher.generate(make_requests(50))
        teacher.close()
    with LLMServer(ServerSettings(api_key="the-right-key")) as server:
        teacher = make_teacher(kind, server)
        [response] = teacher.generate(make_requests(1))
        teacher.close()
    assert (error_reason(response.error), response.status, response.attempts) == ("auth", 401, 1)


def test_501_is_permanent_and_never_retried(kind, make_requests):
    requests = make_requests(6)
    with LLMServer(ServerSettings(faults=FaultPlan(permanent={"not_implemented": 1.0}))) as server:
        teacher = make_teacher(kind, server, max_attempts=5)
        responses = teacher.generate(requests)
        teacher.close()
        counts = server.stats()["requests"]
    assert {(r.status, r.attempts, error_reason(r.error)) for r in responses} == {(501, 1, "server_error")}
    assert all(counts[message_key(r.messages)] == 1 for r in requests)


def test_stored_error_text_is_scrubbed_of_the_key_and_cut(kind, make_requests):
    with LLMServer(ServerSettings(faults=FaultPlan(permanent={"echo_key": 1.0}))) as server:
        teacher = make_teacher(kind, server)
        [response] = teacher.generate(make_requests(1))
        teacher.close()
    assert error_reason(response.error) == "bad_request" and "Bad request from ***" in response.error
    assert KEY not in response.error and len(response.error) <= ERROR_CHARS


def test_scrubber_covers_url_credentials_and_hidden_request_extras():
    scrub = Scrubber.for_endpoint("https://gw-user:p%40ss-word@gw.example/v1", KEY, {"x_gateway": "gw-secret-77", "seed": 1234})
    text = f"echo {KEY} gw-user p%40ss-word p@ss-word gw-secret-77 seed 1234"
    assert scrub(text) == "echo *** *** *** *** *** seed 1234"  # an allowed extra (seed) stays
    assert scrub("y" * 500).endswith("...") and len(scrub("y" * 500)) == ERROR_CHARS
    # A key cut in half by the length limit is not left behind: scrubbed first, cut after.
    assert KEY[:6] not in Scrubber([KEY])("z" * (ERROR_CHARS - 5) + KEY)
    assert without_credentials("https://u:k@gw.example:8443/v1") == "https://***@gw.example:8443/v1"
