"""k8s/: plain manifests for users without Helm. Valid for Kubernetes and KubeRay, the demo
RayJob is what `kdist submit` builds from configs/demo.yaml, and the submitter Role is exactly
enough for `kdist submit/status/logs/cancel` (checked through the fake API server enforcing
it)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kdist.cli import main
from kdist.k8s.rayjob import build_configmap, build_rayjob
from kdist.k8s.shipped_config import load_shipped_config
from support import kuberay_schema
from support.fake_kube import RAYJOBS, FakeKube
from support.manifests import core_errors, documents, restricted_profile_errors

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
# How k8s/rayjob-demo.yaml is made (also written at its top): a small CPU-only Ray cluster.
DEMO_ARGS = ["--stage", "demo"]
DEMO_OVERRIDES = [
    "cluster.head.resources.cpu=2",
    "cluster.head.resources.memory=8Gi",
    "cluster.workers.resources.cpu=4",
    "cluster.workers.resources.memory=8Gi",
    "cluster.workers.resources.gpu=0",
]


def all_objects():
    return [(path.name, obj) for path in MANIFESTS for obj in documents(path.read_text())]


def test_there_are_manifests():
    assert {path.name for path in MANIFESTS} >= {"rbac.yaml", "storage.yaml", "rayjob-demo.yaml"}


@pytest.mark.parametrize("version", ["1.25.0", "1.32.0"])
def test_every_object_is_valid_kubernetes(version):
    errors = [f"{name}: {e}" for name, obj in all_objects() for e in core_errors(obj, version)]
    assert errors == []


def test_rayjobs_are_valid_for_kuberay_and_follow_the_restricted_profile():
    folder = str(kuberay_schema.require_crd_dir())
    rayjobs = [obj for _, obj in all_objects() if obj["kind"] == "RayJob"]
    assert rayjobs
    for rayjob in rayjobs:
        assert restricted_profile_errors(rayjob) == []
        assert kuberay_schema.rayjob_errors(rayjob, folder) == []


def test_no_namespace_is_hard_coded():
    """`kubectl apply -n NS` puts them anywhere."""
    assert [name for name, obj in all_objects() if "namespace" in obj["metadata"]] == []


def test_demo_rayjob_is_what_kdist_submit_builds_from_the_demo_config():
    run = load_shipped_config(DEMO_CONFIG, DEMO_OVERRIDES, "demo")
    expected = [build_configmap(run, "demo"), build_rayjob(run.config, "demo", "demo")]
    for obj in expected:
        del obj["metadata"]["namespace"]
    shipped = documents((ROOT / "k8s" / "rayjob-demo.yaml").read_text())
    assert shipped == expected, (
        "k8s/rayjob-demo.yaml is out of date: regenerate it with the command at its top"
    )


def role_rules() -> list[dict]:
    (role,) = [obj for name, obj in all_objects() if obj["kind"] == "Role"]
    return role["rules"]


def submit_status_logs_cancel(capsys, tmp_path: Path, rules: list[dict]) -> list[str]:
    """Run the whole submitter workflow as the Role allows; return what went wrong."""
    config_path = tmp_path / "run.yaml"
    config_path.write_text("run: {name: rbac}\nteacher: {model: t}\nstudent: {model: s}\n")
    problems = []
    with FakeKube(rules=rules, max_watch_seconds=2) as kube:
        kubeconfig = str(kube.write_kubeconfig(tmp_path / "kc"))

        def play_operator() -> None:
            deadline = time.monotonic() + 5
            while kube.get(RAYJOBS, "default", "rbac") is None and time.monotonic() < deadline:
                time.sleep(0.02)
            kube.add_pod("default", "rbac-abcde", {"job-name": "rbac"}, "done\n")
            time.sleep(0.2)
            if kube.get(RAYJOBS, "default", "rbac") is not None:
                kube.set_status("default", "rbac", {"jobDeploymentStatus": "Complete",
                                                    "jobStatus": "SUCCEEDED"})

        operator = threading.Thread(target=play_operator, daemon=True)
        operator.start()
        for argv in (
            ["submit", "-c", str(config_path), "--timeout", "4"],
            ["status", "rbac"],
            ["logs", "rbac"],
            ["submit", "-c", str(config_path), "--name", "rbac-follow", "--follow",
             "--timeout", "0.5"],  # follows until the timeout: exit 1, but no error line
            ["cancel", "rbac"],
        ):
            code = main([*argv, "--kubeconfig", kubeconfig])
            out, err = capsys.readouterr()
            # A warning line (the logs at the end of submit) counts as a failure too.
            if (code != 0 and "still running" not in out) or "kdist:" in err:
                problems.append(f"{argv[0]}: {err.strip() or out.strip()}")
        operator.join(5)
    return problems


def test_the_submitter_role_is_enough(capsys, tmp_path):
    assert submit_status_logs_cancel(capsys, tmp_path, role_rules()) == []


def test_the_submitter_role_grants_nothing_unused(capsys, tmp_path):
    rules = role_rules()
    for index, rule in enumerate(rules):
        for verb in rule["verbs"]:
            fewer = [dict(r) for r in rules]
            fewer[index] = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
            problems = submit_status_logs_cancel(capsys, tmp_path, fewer)
            assert problems, f"{rule['resources']} {verb} is granted but never needed"
            assert any("permission denied" in p or "not reachable" in p for p in problems)
