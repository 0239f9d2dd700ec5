"""A real local Ray head for `ray job submit` tests: started on 127.0.0.1 only, with free
ports, its own temp dir and its own auth token (Ray 2.60 turns token auth on for local
clusters), and stopped by its PID, with any process that names its temp dir."""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class RayHead:
    address: str  # the dashboard's HTTP address, what `ray job submit --address` takes
    env: dict[str, str]  # the environment a client needs (PATH, the auth token)

    def job_status(self, submission: str) -> str:
        with urllib.request.urlopen(self.request(f"/api/jobs/{submission}"), timeout=10) as response:
            return json.load(response)["status"]

    def submit(self, submission: str, working_dir: Path, entrypoint: list[str], cwd: Path,
               timeout_s: float) -> subprocess.CompletedProcess:
        command = [str(BIN / "ray"), "job", "submit", "--address", self.address,
                   "--submission-id", submission, "--working-dir", str(working_dir),
                   "--runtime-env", str(working_dir / "ray_jobs/runtime_env.yaml"), "--", *entrypoint]
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, cwd=cwd)

    def request(self, path: str) -> urllib.request.Request:
        return urllib.request.Request(f"{self.address}{path}",
                                      headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def ray_head(log_path: Path, num_cpus: int = 2) -> Iterator[RayHead]:
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
        f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        head = RayHead(f"http://127.0.0.1:{dashboard}", env)
        try:
            _wait_for_dashboard(head, process)
            yield head
        finally:
            process.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
            _stop_leftovers(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(head: RayHead, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "ray start exited"
        try:
            with urllib.request.urlopen(head.request("/api/version"), timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError("the Ray dashboard did not come up")


def _stop_leftovers(temp_dir: Path) -> None:
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
