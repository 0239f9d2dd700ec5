"""`ray job submit` of the offline demo through ray_jobs/, against a real local Ray head.

The head is started by the test on 127.0.0.1 only, with free ports, its own temp dir and its
own auth token (Ray 2.60 turns token auth on for local clusters), and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# A demo small enough for 2 cores: it proves the plumbing (submission, working dir, config,
# outputs), not the learning, so the teacher's accuracy floor is lowered to anything.
SMALL_DEMO = [
    "data.source.teacher_train=300",
    "data.source.train=120",
    "data.source.validation=40",
    "data.source.test=40",
    "teacher.replicas=1",
    "demo.teacher_train.max_steps=10",
    "demo.teacher_train.num_workers=1",
    "train.num_workers=1",
    "demo.teacher_train.eval_every=5",
    "demo.min_teacher_accuracy=0.01",
    "demo.judge_train=null",  # nor its pairwise judge (tests/test_demo_judge.py checks that)
    "evaluate.judge=null",
    "train.batch_size=16",
    "train.max_steps=4",
    "train.eval_every=2",
]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    gcs, dashboard, client, agent, agent_grpc, env_agent, metrics, manager, objects = free_ports(9)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        # Keep Ray on loopback even though this machine has a network address.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    # Short: Ray's unix sockets live under it, and their paths may not exceed 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="kdist-rjs-"))
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        f"--port={gcs}", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={manager}", f"--object-manager-port={objects}",
        "--num-cpus=2", f"--temp-dir={temp_dir}",
    ]
    log = (tmp_path / "ray-start.log").open("w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_dashboard(address, env["RAY_AUTH_TOKEN"], head)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        try:
            head.wait(15)
        except subprocess.TimeoutExpired:
            head.kill()
        stop_leftovers(temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_dashboard(address: str, token: str, head: subprocess.Popen) -> None:
    request = urllib.request.Request(f"{address}/api/version",
                                     headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start exited"
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError("the Ray dashboard did not come up")


def job_status(address: str, token: str, submission: str) -> str:
    request = urllib.request.Request(f"{address}/api/jobs/{submission}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["status"]


def stop_leftovers(temp_dir: Path) -> None:
    """Processes of this head that outlived it: only those that name its own temp dir."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(temp_dir).encode() in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_job_submit_runs_the_demo_and_outputs_land(ray_head, tmp_path):
    address, env = ray_head
    outputs = tmp_path / "outputs" / "demo"
    submission = f"kdist-demo-{secrets.token_hex(4)}"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address,
         "--submission-id", submission,
         "--working-dir", str(ROOT), "--runtime-env", str(ROOT / "ray_jobs/runtime_env.yaml"),
         "--", "python", "ray_jobs/job.py", "demo", "--config", "configs/demo.yaml",
         f"run.output_dir={outputs}", *SMALL_DEMO],
        env=env, capture_output=True, text=True, timeout=540, cwd=tmp_path,
    )
    logs = submit.stdout + submit.stderr
    assert job_status(address, env["RAY_AUTH_TOKEN"], submission) == "SUCCEEDED", logs[-6000:]
    assert submit.returncode == 0
    metrics = json.loads((outputs / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"base", "teacher", "student"}
    assert all(0.0 <= value <= 1.0 for value in metrics["accuracy"].values())
    assert (outputs / "eval" / "metrics.json").exists()
    assert (outputs / "student").is_dir() and (outputs / "prompts").is_dir()
