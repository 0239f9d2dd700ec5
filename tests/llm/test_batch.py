"""The batch-inference layer on its own, against the loopback server: several candidates per
id, exact resume, errors as rows, and a request hash that names the model's weights."""

from __future__ import annotations

import pyarrow as pa
import pytest

from kdist.endpoints import HFEndpoint, OpenAIEndpoint
from kdist.llm.batch import request_identity, run_inference
from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings, message_key

pytestmark = pytest.mark.usefixtures("local_ray")


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
