"""The batch backend's orchestrator end to end against the loopback server's files and
batches routes (driver-side, no Ray): chunks within the limits, answers stored like
synchronous ones, a batch that expires half done, a SIGKILL between create and download,
the budget; the server's counts prove no row was asked twice and no batch created twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from kdist.endpoints import OpenAIBatchEndpoint, PriceSection
from kdist.llm.batch import hash_requests
from kdist.llm.budget import Caps, Ledger, worst_case_prompt_tokens
from kdist.llm.openai_batch import BatchOrchestrator
from kdist.llm.store import ResponseStore, new_run_id
from kdist.rows import RESPONSE_SCHEMA
from kdist.testing.batches_api import BatchSettings
from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings, message_key

KEY_ENV = "KDIST_TEST_BATCH_KEY"
KEY = "sk-batch-secret-4242"


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question {i}: pick one. A) red B) green C) blue"}]


def _todo(count: int, endpoint: OpenAIBatchEndpoint, start: int = 0) -> pa.Table:
    rows = [{"id": f"q{i}", "candidate": "teacher", "messages": _messages(i)} for i in range(start, start + count)]
    return hash_requests(pa.Table.from_pylist(rows), f"openai:{endpoint.model}", endpoint.sampling.model_dump())


def _endpoint(server: LLMServer, **fields) -> OpenAIBatchEndpoint:
    defaults = {"model": "m", "endpoint": server.openai_base_url, "api_key_env": KEY_ENV,
                "poll_initial_s": 0.02, "poll_max_s": 0.1, "max_attempts": 2}  # fmt: skip
    return OpenAIBatchEndpoint(**{**defaults, **fields})


def _run(endpoint, store_dir: Path, todo: pa.Table, ledger: Ledger | None = None) -> BatchOrchestrator:
    orchestrator = BatchOrchestrator(endpoint, ResponseStore(str(store_dir)), new_run_id(), ledger)
    orchestrator.run([todo])
    return orchestrator


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _server(**batches) -> LLMServer:
    return LLMServer(ServerSettings(api_key=KEY, batches=BatchSettings(**{"phase_s": 0.05, **batches})))


def _asked_once(server: LLMServer, ids: range) -> None:
    counts = server.stats()["requests"]
    assert [counts.get(message_key(_messages(i)), 0) for i in ids] == [1] * len(ids)


def test_rows_split_into_batches_within_the_limits_and_stored_like_synchronous_answers(tmp_path):
    with _server() as server:
        endpoint = _endpoint(server, batch_max_requests=12, batch_max_bytes=2048)
        todo = _todo(40, endpoint)
        line_bytes = len(json.dumps({"custom_id": todo["request_hash"][0].as_py()})) + 200  # roughly one line
        _run(endpoint, tmp_path, todo)
        stats = server.stats()
        _asked_once(server, range(40))
    table = ResponseStore(str(tmp_path)).read_all()
    assert table.schema == RESPONSE_SCHEMA and table.num_rows == 40
    assert table["error"].null_count == 40 and set(table["response"].to_pylist()) <= {"A", "B", "C"}
    assert sorted(table["id"].to_pylist()) == sorted(f"q{i}" for i in range(40))
    assert all(t > 0 for t in table["prompt_tokens"].to_pylist()) and set(table["model"].to_pylist()) == {"openai_batch:m"}
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "batches").glob("*.json"))]
    assert stats["batches"]["created"] == len(records) >= 4  # 12 rows a batch, and 2 KB a file
    assert all(r["rows"] <= 12 and r["stage"] == "stored" for r in records)
    assert all((tmp_path / "batches" / f"{r['chunk']}.jsonl").stat().st_size <= 2048 for r in records) and line_bytes < 2048


def test_a_batch_that_expires_half_done_resubmits_only_its_missing_rows(tmp_path):
    with _server(expire_first=1) as server:
        endpoint = _endpoint(server)
        _run(endpoint, tmp_path, _todo(20, endpoint))
        stats = server.stats()
        _asked_once(server, range(20))
    records = sorted((json.loads(p.read_text()) for p in (tmp_path / "batches").glob("*.json")), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["rows"]) for r in records] == [(1, 20), (2, 10)]
    assert records[0]["resubmitted_as"] == records[1]["chunk"]
    assert stats["batches"]["created"] == 2 and stats["batches"]["by_status"] == {"expired": 1, "completed": 1}
    table = ResponseStore(str(tmp_path)).read_all()
    assert table.num_rows == 20 and table["error"].null_count == 20
    assert sorted(table["attempts"].to_pylist()) == [1] * 10 + [2] * 10


def test_rows_still_missing_after_the_last_resubmit_are_error_rows_and_permanent_failures_are_not_resubmitted(tmp_path):
    plan = FaultPlan(permanent={"content_filter": 0.25}, seed=1)
    with LLMServer(ServerSettings(api_key=KEY, faults=plan, batches=BatchSettings(phase_s=0.05, expire_first=5))) as server:
        endpoint = _endpoint(server, max_resubmits=1)
        _run(endpoint, tmp_path, _todo(16, endpoint))
        created = server.stats()["batches"]["created"]
    table = ResponseStore(str(tmp_path)).read_all()
    errors = [e for e in table["error"].to_pylist() if e]
    filtered = {f"q{i}" for i in range(16) if plan.fault_for(message_key(_messages(i)), 99)}
    assert created == 2 and table.num_rows == 16
    assert sum(e.startswith("content_filter") for e in errors) == len(filtered) > 0
    assert any(e.startswith("batch_expired: not answered in 2 batches") for e in errors)
    assert all(KEY not in e for e in errors)


_CHILD = """
import sys
from kdist.endpoints import OpenAIBatchEndpoint
from kdist.llm.store import ResponseStore, new_run_id
from kdist.llm.openai_batch import BatchOrchestrator
sys.path.insert(0, {tests!r})
from test_openai_batch import _todo
endpoint = OpenAIBatchEndpoint.model_validate_json({endpoint!r})
BatchOrchestrator(endpoint, ResponseStore({store!r}), new_run_id(), None).run([_todo(30, endpoint)])
"""


@pytest.mark.slow  # a child interpreter that imports kdist: about 10 s on 2 busy cores
def test_sigkill_between_create_and_download_then_the_rerun_polls_instead_of_creating(tmp_path):
    with _server(phase_s=1.0) as server:
        endpoint = _endpoint(server, batch_max_requests=20, poll_initial_s=0.2)
        code = _CHILD.format(tests=str(Path(__file__).parent), endpoint=endpoint.model_dump_json(), store=str(tmp_path))
        child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, KEY_ENV: KEY})
        records = tmp_path / "batches"
        deadline = time.monotonic() + 30
        while sum(json.loads(p.read_text())["batch_id"] is not None for p in records.glob("*.json")) < 2:
            assert child.poll() is None and time.monotonic() < deadline, "the child ended before creating its batches"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert server.stats()["batches"]["created"] == 2 and not list(tmp_path.glob("answers/*.parquet"))
        # A crash between the create call and its record: the batch is found by its metadata.
        crashed = sorted(records.glob("*.json"))[1]
        record = json.loads(crashed.read_text())
        crashed.write_text(json.dumps({**record, "stage": "uploaded", "batch_id": None}))
        _run(endpoint.model_copy(update={"poll_initial_s": 0.05}), tmp_path, _todo(30, endpoint))
        assert server.stats()["batches"]["created"] == 2
        _asked_once(server, range(30))
    assert json.loads(crashed.read_text())["batch_id"] == record["batch_id"]
    assert ResponseStore(str(tmp_path)).read_all()["error"].null_count == 30


def test_the_budget_caps_what_batches_may_cost_and_counts_the_rows_not_asked(tmp_path):
    prices = PriceSection(input_per_million_tokens=1000.0, output_per_million_tokens=2000.0)
    with _server() as server:
        endpoint = _endpoint(server, prices=prices, batch_max_requests=8)
        todo = _todo(40, endpoint)
        worst = [prices.cost(worst_case_prompt_tokens(m), endpoint.sampling.max_tokens) for m in todo["messages"].to_pylist()]
        cap = sum(worst[:25]) + worst[25] / 2  # 25 rows fit, the 26th does not
        ledger = Ledger(Caps(cap, None, prices))
        orchestrator = _run(endpoint, tmp_path, todo, ledger)
        stats = server.stats()
    table = ResponseStore(str(tmp_path)).read_all()
    spent = prices.cost(sum(table["prompt_tokens"].to_pylist()), sum(table["completion_tokens"].to_pylist()))
    assert orchestrator.budget_stopped and table.num_rows == 25 and stats["total"] == 25
    assert spent <= cap and ledger.state()["spent_cost"] == pytest.approx(spent) and ledger.reserved_cost == pytest.approx(0.0)
    assert stats["batches"]["created"] == 4  # 8 + 8 + 8 + 1: the last chunk closed by the budget


def test_max_output_tokens_caps_the_worst_case_of_the_outputs(tmp_path):
    with _server() as server:
        endpoint = _endpoint(server)  # max_tokens 16 a row
        orchestrator = _run(endpoint, tmp_path, _todo(10, endpoint), Ledger(Caps(None, 100, None)))
        assert server.stats()["total"] == 6 and orchestrator.budget_stopped  # 6 x 16 <= 100 < 7 x 16


def test_azure_batch_deployment_paths(tmp_path):
    with _server() as server:
        endpoint = _endpoint(server, endpoint=server.base_url, api_version="2025-03-01-preview")
        _run(endpoint, tmp_path, _todo(5, endpoint))
        _asked_once(server, range(5))
    lines = [json.loads(line) for p in (tmp_path / "batches").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert {line["url"] for line in lines} == {"/chat/completions"} and {line["body"]["model"] for line in lines} == {"m"}


def test_request_extras_reach_the_provider_but_never_the_output_dir(tmp_path):
    import openai

    with _server() as server:
        endpoint = _endpoint(server, request_extras={"safety_identifier": "tok-hidden-77"})
        _run(endpoint, tmp_path, _todo(3, endpoint))
        record = json.loads(next((tmp_path / "batches").glob("*.json")).read_text())
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=KEY)
        uploaded = [json.loads(line) for line in client.files.content(record["input_file_id"]).text.splitlines()]
    assert {line["body"]["safety_identifier"] for line in uploaded} == {"tok-hidden-77"}
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and b"tok-hidden-77" in p.read_bytes()]


def test_a_rerun_counts_what_was_spent_and_a_raised_cap_asks_only_the_rest(tmp_path):
    from pydantic import TypeAdapter

    from kdist.config import TeacherSection
    from kdist.llm.budget import ledger_for

    prices = PriceSection(input_per_million_tokens=1000.0, output_per_million_tokens=2000.0)
    store = ResponseStore(str(tmp_path))

    def spent() -> float:
        table = store.read_all()
        return prices.cost(sum(table["prompt_tokens"].to_pylist()), sum(table["completion_tokens"].to_pylist()))

    def rerun(endpoint) -> BatchOrchestrator:
        done = set(store.read_all()["request_hash"].to_pylist())
        return _run(endpoint, tmp_path, todo.filter(pa.array([h not in done for h in todo["request_hash"].to_pylist()])), ledger_for(endpoint, store))

    with _server() as server:
        teacher = TypeAdapter(TeacherSection).validate_python({**_endpoint(server, prices=prices).model_dump(), "max_cost": 0.5})
        todo = _todo(30, teacher)
        assert rerun(teacher).budget_stopped
        first = store.read_all().num_rows
        # Answers cost less than their worst case: a rerun may use what was reserved but not
        # spent, and what the store's answers cost counts against the same cap.
        assert rerun(teacher).budget_stopped and spent() <= 0.5
        rerun(teacher.model_copy(update={"max_cost": 100.0}))
        _asked_once(server, range(30))
    assert 0 < first < 30 and store.read_all().num_rows == 30


def test_an_api_failure_is_one_line_without_the_key(tmp_path):
    from kdist.errors import UsageError

    with _server() as server:
        endpoint = _endpoint(server)
        orchestrator = BatchOrchestrator(endpoint, ResponseStore(str(tmp_path)), new_run_id(), None)
        with pytest.raises(UsageError, match=r"^batch API at http://127\.0\.0\.1:\d+/v1: 404 ") as raised:
            list(orchestrator._download("file-does-not-exist"))
    assert KEY not in str(raised.value) and "\n" not in str(raised.value)
