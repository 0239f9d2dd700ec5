"""The batch-inference layer on its own, against the loopback server: several candidates per
id, exact resume, errors as rows, and a request hash that names the model's weights."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from kdist.endpoints import HFEndpoint, OpenAIEndpoint
from kdist.llm.batch import request_identity, run_inference
from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings, message_key

pytestmark = pytest.mark.usefixtures("local_ray")

# Set before the module's Ray starts: its workers read the key from their environment.
os.environ.setdefault("KDIST_WRONG_KEY", "wrong-key-5150")


def _requests(ids: list[str], candidates: list[str]):
    import ray.data

    rows = [{"id": i, "candidate": c, "messages": [{"role": "user", "content": f"{c} asks {i}: A) x B) y"}]}
            for i in ids for c in candidates]  # fmt: skip
    return ray.data.from_arrow(pa.Table.from_pylist(rows)), rows


def _endpoint(server: LLMServer) -> OpenAIEndpoint:
    return OpenAIEndpoint(model="m", endpoint=server.openai_base_url, concurrency=8, batch_size=8, replicas=2,
                          backoff_initial_s=0.01, backoff_max_s=0.05, max_attempts=2)  # fmt: skip


def test_two_candidates_per_id_then_resume_asks_only_what_is_missing(tmp_path):
    store = str(tmp_path / "answers")
    ids = [f"q{i}" for i in range(30)]
    with LLMServer(ServerSettings()) as server:
        first, _ = _requests(ids[:20], ["a", "b"])
        result = run_inference(first, _endpoint(server), store, expected_rows=40)
        assert (result.summary["requests"], result.summary["done"], result.summary["this_run"]["requested"]) == (40, 40, 40)
        everything, rows = _requests(ids, ["a", "b"])
        result = run_inference(everything, _endpoint(server), store, expected_rows=60)
        counts = server.stats()["requests"]
    table = result.store.read_all()
    assert sorted(zip(table["id"].to_pylist(), table["candidate"].to_pylist())) == sorted((r["id"], r["candidate"]) for r in rows)
    assert result.summary["this_run"]["requested"] == 20 and result.summary["done"] == 60
    assert all(counts[message_key(row["messages"])] == 1 for row in rows)  # nothing asked twice
    assert result.responses().count() == 60


def test_a_new_key_whose_request_was_answered_under_another_key_gets_that_answer_unasked(tmp_path):
    """Two keys, one request (the same prompt under another candidate or id): the second key
    is not asked again and still gets its row, counted as done but neither asked nor paid."""
    import ray.data

    store = str(tmp_path / "answers")
    first, rows = _requests([f"q{i}" for i in range(6)], ["a"])
    again = [{**row, "candidate": "b"} for row in rows] + [{**rows[0], "id": "q0-again"}]
    with LLMServer(ServerSettings()) as server:
        run_inference(first, _endpoint(server), store, expected_rows=6)
        result = run_inference(ray.data.from_arrow(pa.Table.from_pylist(again)), _endpoint(server), store, expected_rows=7)
        assert server.stats()["total"] == 6  # nothing asked twice
    table = {(r["id"], r["candidate"]): r for r in result.store.read_all().to_pylist()}
    assert len(table) == 13
    for row in again:
        copy, source = table[(row["id"], row["candidate"])], table[(row["id"].removesuffix("-again"), "a")]
        assert copy["response"] == source["response"] and copy["request_hash"] == source["request_hash"]
        assert copy["attempts"] == 0 and source["attempts"] == 1
    summary = result.summary
    assert (summary["requests"], summary["done"], summary["missing"], summary["copied"]) == (7, 7, 0, 7)
    assert summary["this_run"] == {"requested": 0, "retried": 0, "prompt_tokens": 0, "completion_tokens": 0}
    assert summary["prompt_tokens"] == 0  # paid under the first keys, not in this request set


def test_errors_are_rows_and_a_rerun_asks_only_them(tmp_path):
    plan = FaultPlan(permanent={"bad_request": 0.3}, seed=3)
    store = str(tmp_path / "answers")
    requests, rows = _requests([f"q{i}" for i in range(40)], ["teacher"])
    failing = {message_key(r["messages"]) for r in rows if plan.fault_for(message_key(r["messages"]), 1)}
    assert 5 < len(failing) < 25
    with LLMServer(ServerSettings(faults=plan)) as server:
        result = run_inference(requests, _endpoint(server), store, expected_rows=40)
        assert result.summary["failed"] == {"bad_request": len(failing)} and result.summary["done"] == 40 - len(failing)
        errors = result.store.read_all(["error", "status"])
        assert errors["status"].to_pylist().count(400) == len(failing)
        before = dict(server.stats()["requests"])
        run_inference(requests, _endpoint(server), store, expected_rows=40)
        after = server.stats()["requests"]
    assert {key for key in after if after[key] != before.get(key, 0)} == failing


def test_a_local_model_is_named_by_its_weights(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    before = request_identity(HFEndpoint(model=str(copy)))
    assert request_identity(HFEndpoint(model=str(copy))) == before
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # retrained in place: same path, new file
    assert request_identity(HFEndpoint(model=str(copy))) != before
    assert request_identity(OpenAIEndpoint(model="gpt", endpoint="http://127.0.0.1:1/v1")) == "openai:gpt"


def _hash_of(endpoint: OpenAIEndpoint, row: dict) -> str:
    from kdist.llm.base import request_hash

    return request_hash(request_identity(endpoint), row["messages"], endpoint.sampling.model_dump())


def test_answers_in_a_killed_runs_log_are_recovered_not_asked_again(tmp_path):
    import json

    from kdist.llm.answer_log import log_dir
    from kdist.llm.store import new_run_id

    store = str(tmp_path / "answers")
    requests, rows = _requests([f"q{i}" for i in range(30)], ["teacher"])
    with LLMServer(ServerSettings()) as server:
        endpoint = _endpoint(server)
        logs = log_dir(store)
        logs.mkdir(parents=True)
        killed = new_run_id()
        lines = [json.dumps({"id": r["id"], "candidate": "teacher", "request_hash": _hash_of(endpoint, r), "model": "openai:m",
                             "response": "A", "attempts": 1, "seconds": 0.2}) for r in rows[:10]]  # fmt: skip
        (logs / f"{killed}-deadbeef-000001.jsonl").write_text("\n".join(lines) + '\n{"id": "q10", "cand')
        result = run_inference(requests, endpoint, store, expected_rows=30)
        counts = server.stats()["requests"]
    asked = {row["id"] for row in rows if counts.get(message_key(row["messages"]))}
    assert asked == {row["id"] for row in rows[10:]}  # the 10 logged answers were not paid again
    assert (result.summary["done"], result.summary["this_run"]["requested"]) == (30, 20)
    table = result.store.read_all(["id", "seconds"])
    assert table.num_rows == 30 and table["seconds"].null_count == 0
    assert not list(logs.glob("*.jsonl"))


def test_a_corrupt_shard_is_set_aside_and_only_its_rows_are_asked_again(tmp_path, caplog):
    import logging

    store = str(tmp_path / "answers")
    requests, rows = _requests([f"q{i}" for i in range(40)], ["teacher"])
    half, _ = _requests([f"q{i}" for i in range(20)], ["teacher"])
    with LLMServer(ServerSettings()) as server:
        run_inference(half, _endpoint(server), store, expected_rows=20)
        first = run_inference(requests, _endpoint(server), store, expected_rows=40)  # two runs: two shards at least
        shard = first.store.shard_paths()[0]
        in_shard = set(first.store._read(shard, ["id"])["id"].to_pylist())
        assert 0 < len(in_shard) <= 20
        with open(shard, "r+b") as handle:
            handle.truncate(100)
        before = dict(server.stats()["requests"])
        with caplog.at_level(logging.WARNING, logger="kdist.llm.store"):
            second = run_inference(requests, _endpoint(server), store, expected_rows=40)
        after = server.stats()["requests"]
    asked_again = {r["id"] for r in rows if after[message_key(r["messages"])] != before[message_key(r["messages"])]}
    assert asked_again == in_shard
    assert any(shard in record.getMessage() for record in caplog.records)
    assert second.summary["done"] == 40 and second.store.read_all(["id"]).num_rows == 40


def test_a_refused_key_stops_the_fan_out_in_one_line(tmp_path):
    from kdist.errors import UsageError, one_line_cause
    from kdist.llm.resilience import KEY_REFUSALS_TO_STOP, KeyRefused

    requests, _ = _requests([f"q{i}" for i in range(400)], ["teacher"])
    with LLMServer(ServerSettings(api_key="right")) as server:
        endpoint = _endpoint(server).model_copy(update={"api_key_env": "KDIST_WRONG_KEY", "concurrency": 4})
        with pytest.raises(Exception) as raised:
            run_inference(requests, endpoint, str(tmp_path / "answers"), expected_rows=400)
        sent = server.stats()["total"]
    refused = one_line_cause(raised.value, (UsageError,))
    assert isinstance(refused, KeyRefused), raised.value
    assert "$KDIST_WRONG_KEY" in str(refused) and "wrong-key-5150" not in str(refused)
    assert sent <= endpoint.replicas * (endpoint.concurrency + KEY_REFUSALS_TO_STOP)


def _teacher(**fields):
    from pydantic import TypeAdapter

    from kdist.config import TeacherSection

    return TypeAdapter(TeacherSection).validate_python(fields)


@pytest.mark.slow  # a Ray Data fan-out: about 10 s alone
def test_the_budget_stops_the_workers_and_counts_what_was_not_asked(tmp_path):
    from kdist.endpoints import PriceSection
    from kdist.llm.budget import worst_case_prompt_tokens

    requests, rows = _requests([f"q{i}" for i in range(40)], ["teacher"])
    prices = {"input_per_million_tokens": 1000.0, "output_per_million_tokens": 4000.0}
    worst = PriceSection(**prices).cost(worst_case_prompt_tokens(rows[0]["messages"]), 16)
    with LLMServer(ServerSettings()) as server:
        teacher = _teacher(kind="openai", model="m", endpoint=server.openai_base_url, concurrency=2, batch_size=4, replicas=2,
                           prices=prices, max_cost=round(6 * worst, 6))  # fmt: skip
        summary = run_inference(requests, teacher, str(tmp_path / "answers"), expected_rows=40).summary
        sent = server.stats()["total"]
    spent = summary["budget"]
    assert spent["stopped"] and 0 < summary["done"] == sent < 40
    assert spent["not_asked"] == summary["missing"] == 40 - sent
    assert summary["estimated_cost"] <= teacher.max_cost and spent["spent_cost"] == pytest.approx(summary["estimated_cost"], abs=1e-6)
    from kdist.stages.generate import budget_stop

    assert f"{40 - sent} rows not asked" in budget_stop(summary) and "max_cost" in budget_stop(summary)


@pytest.mark.slow  # two Ray Data runs: about 15 s alone
def test_the_batch_kind_answers_through_the_same_layer_and_store(tmp_path):
    from kdist.testing.batches_api import BatchSettings

    store = str(tmp_path / "answers")
    requests, rows = _requests([f"q{i}" for i in range(20)], ["teacher"])
    with LLMServer(ServerSettings(batches=BatchSettings(phase_s=0.05))) as server:
        batch = _teacher(kind="openai_batch", model="m", endpoint=server.openai_base_url, poll_initial_s=0.02, poll_max_s=0.1,
                         batch_max_requests=8)  # fmt: skip
        first = run_inference(requests, batch, store, expected_rows=20).summary
        # The same model asked synchronously: the batch's answers count, nothing is asked.
        sync = run_inference(requests, _endpoint(server), store, expected_rows=20).summary
        stats = server.stats()
    assert (first["done"], first["this_run"]["requested"], first["prompt_tokens"] > 0) == (20, 20, True)
    assert (sync["this_run"]["requested"], sync["done"]) == (0, 20)
    assert stats["total"] == 20 and stats["batches"]["created"] == 3
