"""kill -9 in the middle of `kdist generate`, then rerun: the same final ids, no duplicates,
and the endpoint saw at most the rows that were in flight twice (nothing already written is
asked for, or paid for, again)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml

from kdist.llm.batch import BATCHES_PER_BLOCK, TASKS_PER_ACTOR
from kdist.testing.llm_server import LLMServer, ServerSettings, message_key
from support.prompts import synthetic_prompts, write_prompts

pytestmark = pytest.mark.slow

ROWS = 1200
BATCH = 16
# Rows answered but not yet written when the process dies are at most those of the batches in
# flight: blocks in flight per actor x batches per block (all run at once in an async actor).
IN_FLIGHT_BOUND = TASKS_PER_ACTOR * BATCHES_PER_BLOCK * BATCH


def _generate(config_path, log_path) -> subprocess.Popen:
    env = {**os.environ, "KDIST_TEST_KEY": "k"}
    with open(log_path, "ab") as log:
        # A session of its own: the kill below takes the driver and the Ray processes it started.
        return subprocess.Popen(
            [sys.executable, "-m", "kdist.cli", "generate", "--config", str(config_path)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _wait_for_shards(shards_dir, count: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"generate ended (rc {process.returncode}) before it could be killed")
        if shards_dir.exists() and len(list(shards_dir.glob("part-*.parquet"))) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"no {count} shards after {timeout_s} s")


def _wait_quiet(server: LLMServer, seconds: float = 2.0) -> None:
    """Until the endpoint stops getting requests (nothing of the killed run lives on)."""
    total = server.stats()["total"]
    while True:
        time.sleep(seconds)
        now = server.stats()["total"]
        if now == total:
            return
        total = now


def test_kill_9_then_rerun(tmp_path):
    run_dir = tmp_path / "run"
    rows = synthetic_prompts({"train": ROWS, "validation": 1})
    write_prompts(run_dir, rows)
    keys = {row["id"]: message_key(row["messages"]) for row in rows if row["split"] == "train"}
    shards_dir = run_dir / "responses" / "answers"
    log_path = tmp_path / "generate.log"

    with LLMServer(ServerSettings(latency_s=0.05)) as server:
        config = {
            "run": {"output_dir": str(run_dir)},
            "runtime": {"num_cpus": 2, "log_to_driver": False},
            "teacher": {
                "kind": "openai", "model": "teacher-under-test", "endpoint": server.openai_base_url,
                "api_key_env": "KDIST_TEST_KEY", "concurrency": 16, "batch_size": BATCH, "splits": ["train"],
            },
            "student": {"model": "unused"},
        }  # fmt: skip
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))

        first = _generate(config_path, log_path)
        _wait_for_shards(shards_dir, 8, first, timeout_s=240)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        _wait_quiet(server)
        written = pq.read_table(shards_dir).num_rows
        assert 8 * BATCH <= written < ROWS  # killed part way

        second = _generate(config_path, log_path)
        assert second.wait(300) == 0, log_path.read_text()[-3000:]
        counts = server.stats()["requests"]

    table = pq.read_table(shards_dir)
    ids = table["id"].to_pylist()
    assert sorted(ids) == sorted(keys) and len(ids) == len(set(ids)) == ROWS
    assert table["error"].null_count == ROWS
    asked = Counter(counts[key] for key in keys.values())
    print(f"written before the kill: {written}; rows asked once: {asked[1]}, twice: {asked[2]}")
    assert set(asked) <= {1, 2}, asked
    assert asked[2] <= IN_FLIGHT_BOUND, f"{asked[2]} rows asked twice; {written} were written before the kill"
    assert not list(shards_dir.glob(".*.tmp"))
