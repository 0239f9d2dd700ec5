"""`kdist submit --follow` and `kdist logs NAME [--follow]`: the driver log from KubeRay's
submitter pod, through the real `kubernetes` client against the loopback API server, which
streams `follow=true` logs as the "kubelet" (the test) writes them."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from kdist.cli import main
from kdist.k8s import logs
from support.fake_kube import PODS, RAYJOBS, FakeKube

NAMESPACE = "ml-team"
NAME = "tiny-distil"
CONFIG = f"""
run: {{name: {NAME}}}
teacher: {{model: /cache/teacher}}
student: {{model: /cache/student}}
cluster: {{namespace: {NAMESPACE}}}
"""
RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
SUCCEEDED = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
FAILED = {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "exit code 1"}


class Recorder:
    """A stdout/stderr that tests can wait on while the command still runs."""

    def __init__(self) -> None:
        self.text = ""
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        with self.changed:
            self.text += text
            self.changed.notify_all()
        return len(text)

    def flush(self) -> None:
        pass

    def wait_for(self, part: str, timeout: float = 10) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: part in self.text, timeout)

    def lines(self) -> list[str]:
        return self.text.splitlines()


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(logs, "POLL_SECONDS", 0.05)


@pytest.fixture
def kube():
    with FakeKube(max_watch_seconds=0.5) as server:
        yield server


@pytest.fixture
def kubeconfig(kube: FakeKube, tmp_path: Path) -> str:
    return str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE))


@pytest.fixture
def config_path(tmp_path: Path) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG)
    return str(path)


@pytest.fixture
def out(monkeypatch):
    """Call it in the test body: pytest's own capture takes sys.stdout back between phases."""

    def record() -> tuple[Recorder, Recorder]:
        stdout, stderr = Recorder(), Recorder()
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "stderr", stderr)
        return stdout, stderr

    return record


def in_background(action) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def wait_for_rayjob(kube: FakeKube, name: str = NAME) -> None:
    deadline = time.monotonic() + 10
    while kube.get(RAYJOBS, NAMESPACE, name) is None:
        assert time.monotonic() < deadline, "the RayJob was never created"
        time.sleep(0.02)


def pod(kube: FakeKube, name: str, log: str = "", phase: str = "Running") -> None:
    kube.add_pod(NAMESPACE, name, {"job-name": NAME}, log, phase)


def test_submit_follow_streams_the_driver_log_while_the_job_runs(kube, kubeconfig, config_path, out):
    stdout, _ = out()
    seen_live = []

    def operator() -> None:
        wait_for_rayjob(kube)
        kube.set_status(NAMESPACE, NAME, {"jobDeploymentStatus": "Initializing"})
        pod(kube, f"{NAME}-x7k2p", phase="Pending")  # the image is being pulled
        time.sleep(0.3)
        kube.set_status(NAMESPACE, NAME, RUNNING)
        kube.set_pod_phase(NAMESPACE, f"{NAME}-x7k2p", "Running")
        kube.append_log(NAMESPACE, f"{NAME}-x7k2p", "prepare: 120 rows\n")
        # The next line is written only once the first reached the user: streamed, not
        # printed at the end (the job would never end otherwise).
        seen_live.append(stdout.wait_for("prepare: 120 rows\n"))
        kube.append_log(NAMESPACE, f"{NAME}-x7k2p", "evaluate: student accuracy 0.97\n")
        seen_live.append(stdout.wait_for("student accuracy 0.97\n"))
        kube.set_pod_phase(NAMESPACE, f"{NAME}-x7k2p", "Succeeded")
        kube.set_status(NAMESPACE, NAME, SUCCEEDED)

    thread = in_background(operator)
    code = main(["submit", "-c", config_path, "--follow", "--kubeconfig", kubeconfig,
                 "--timeout", "20"])
    thread.join(5)
    assert seen_live == [True, True]
    assert code == 0, stdout.text
    lines = stdout.lines()
    first = lines.index("prepare: 120 rows")
    assert lines[first + 1] == "evaluate: student accuracy 0.97"
    assert lines[first + 2].endswith(f" {NAME}: Complete, job SUCCEEDED")
    assert lines[-1].startswith(f"succeeded; outputs: /outputs/{NAME}")
    statuses = [line.split(f" {NAME}: ", 1)[1] for line in lines if f" {NAME}: " in line]
    assert "Running, job RUNNING" in statuses
    assert "--- last lines" not in stdout.text  # followed: the log is not printed twice
    follows = [path for method, path in kube.requests if "/log" in path and "follow=true" in path]
    assert follows, "expected a follow=true log request"


def test_each_line_once_across_cut_streams_and_a_retried_submitter(tmp_path, config_path, out):
    stdout, _ = out()
    # Streams end after 0.2 s although the pod runs: the client must read again, skipping
    # what it wrote; a failed submitter pod is followed by a newer one (the Job's retry).
    with FakeKube(max_log_follow_seconds=0.2) as kube:
        kubeconfig = str(kube.write_kubeconfig(tmp_path / "kc", namespace=NAMESPACE))

        def operator() -> None:
            wait_for_rayjob(kube)
            kube.set_status(NAMESPACE, NAME, RUNNING)
            pod(kube, "first", "try 1: line 1\n")
            # Each next line only once the client printed the previous one, and later than
            # the 0.2 s cut: the stream that carried it has ended, so each line needs a new
            # read whatever the machine's load.
            for previous, line in (("try 1: line 1\n", "try 1: line 2\n"),
                                   ("try 1: line 2\n", "try 1: line 3\n")):
                stdout.wait_for(previous)
                time.sleep(0.3)
                kube.append_log(NAMESPACE, "first", line)
            stdout.wait_for("try 1: line 3\n")
            kube.set_pod_phase(NAMESPACE, "first", "Failed")
            time.sleep(1.1)  # a later creationTimestamp (whole seconds)
            pod(kube, "second", "try 2: dashboard up\n")
            time.sleep(0.3)
            kube.append_log(NAMESPACE, "second", "try 2: done")  # no final newline
            kube.set_pod_phase(NAMESPACE, "second", "Succeeded")
            kube.set_status(NAMESPACE, NAME, SUCCEEDED)

        thread = in_background(operator)
        code = main(["submit", "-c", config_path, "-f", "--kubeconfig", kubeconfig,
                     "--timeout", "20"])
        thread.join(5)
    assert code == 0, stdout.text
    driver = [line for line in stdout.lines() if line.startswith("try")]
    assert driver == [
        "try 1: line 1", "try 1: line 2", "try 1: line 3", "try 2: dashboard up", "try 2: done"
    ]
    follows = [path for _, path in kube.requests if "/pods/first/log" in path]
    assert len(follows) >= 3, "expected reads again after the cut streams"


def test_logs_prints_the_log_and_follow_ends_with_the_job(kube, kubeconfig, capsys):
    kube.create(RAYJOBS, NAMESPACE, _rayjob())
    kube.set_status(NAMESPACE, NAME, RUNNING)
    pod(kube, f"{NAME}-abcde", "line 1\nline 2\n")
    assert main(["logs", NAME, "--kubeconfig", kubeconfig]) == 0
    assert capsys.readouterr().out == "line 1\nline 2\n"

    def finish() -> None:
        time.sleep(0.4)
        kube.append_log(NAMESPACE, f"{NAME}-abcde", "line 3\n")
        kube.set_pod_phase(NAMESPACE, f"{NAME}-abcde", "Failed")
        kube.set_status(NAMESPACE, NAME, FAILED)

    thread = in_background(finish)
    code = main(["logs", NAME, "--follow", "-n", NAMESPACE, "--kubeconfig", kubeconfig])
    thread.join(5)
    captured = capsys.readouterr()
    assert code == 1
    # stdout is the driver log alone; status lines and the outcome go to stderr.
    assert captured.out == "line 1\nline 2\nline 3\n"
    assert f"RayJob {NAMESPACE}/{NAME} did not succeed: Complete, job FAILED: exit code 1" in (
        captured.err
    )


def test_logs_errors_are_one_line(kube, kubeconfig, capsys):
    def run(*argv: str) -> tuple[int, str]:
        code = main(["logs", *argv, "--kubeconfig", kubeconfig])
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return code, err

    code, err = run(NAME)
    assert code == 1 and f"RayJob {NAME} in namespace {NAMESPACE} not found" in err
    code, err = run(NAME, "--follow")
    assert code == 1 and f"RayJob {NAME} in namespace {NAMESPACE} not found" in err
    kube.create(RAYJOBS, NAMESPACE, _rayjob())
    code, err = run(NAME)
    assert code == 1 and "has no submitter pod yet" in err
    assert f"kdist logs {NAME} -n {NAMESPACE} --follow" in err
    pod(kube, f"{NAME}-abcde", phase="Pending")
    code, err = run(NAME)
    assert code == 1 and f"submitter pod {NAME}-abcde of RayJob {NAME} is not running" in err
    code, err = run("Not_A_Name")
    assert code == 2 and "must be a lowercase DNS label" in err


def test_usage_errors_exit_2(capsys, config_path):
    with pytest.raises(SystemExit) as raised:
        main(["logs"])
    assert raised.value.code == 2
    with pytest.raises(SystemExit) as raised:
        main(["submit", "-c", config_path, "--follow", "--no-wait"])
    assert raised.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_following_a_deleted_job_or_past_the_timeout_fails(kube, kubeconfig, config_path, out):
    stdout, stderr = out()
    kube.create(RAYJOBS, NAMESPACE, _rayjob())
    kube.set_status(NAMESPACE, NAME, RUNNING)
    pod(kube, f"{NAME}-abcde", "working\n")
    started = time.monotonic()
    code = main(["submit", "-c", config_path, "--name", "other", "-f", "--kubeconfig",
                 kubeconfig, "--timeout", "0.8"])
    assert code == 1 and "still running after 0.8 s" in stdout.text
    assert time.monotonic() - started < 5

    def cancel() -> None:
        stdout.wait_for("working\n")
        kube.delete(RAYJOBS, NAMESPACE, NAME)  # kdist cancel: Kubernetes deletes its pods
        kube.delete(PODS, NAMESPACE, f"{NAME}-abcde")

    thread = in_background(cancel)
    code = main(["logs", NAME, "-f", "--kubeconfig", kubeconfig])
    thread.join(5)
    assert code == 1
    assert "working" in stdout.text
    assert f"{NAME}: deleted" in stderr.text


def _rayjob() -> dict:
    from kdist.config import validate_config
    from kdist.k8s.rayjob import build_rayjob

    config = validate_config({"teacher": {"model": "t"}, "student": {"model": "s"},
                              "cluster": {"namespace": NAMESPACE}})
    return build_rayjob(config, NAME)
