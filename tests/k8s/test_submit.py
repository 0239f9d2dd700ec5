"""`kdist submit/status/cancel` through the real `kubernetes` client against our fake API
server on loopback (real HTTP): create, conflict, status through a watch, cancel, and the
one-line errors for no permission, no KubeRay, no kubeconfig, bad credentials."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config as kube_config

from kdist.cli import main
from kdist.config import load_config
from kdist.k8s.api import KubeError, explained
from kdist.k8s.rayjob import build_rayjob
from kdist.runtime import free_loopback_port
from support import kuberay_schema
from support.fake_kube import CONFIGMAPS, RAYJOBS, FakeKube
from support.manifests import core_errors, pod_templates, restricted_profile_errors

NAMESPACE = "ml-team"
NAME = "tiny-distil"

CONFIG = f"""
run: {{name: {NAME}}}
teacher: {{model: /cache/teacher}}
student: {{model: /cache/student}}
cluster:
  namespace: {NAMESPACE}
  workers: {{replicas: 2, min_replicas: 1, max_replicas: 2, resources: {{gpu: 8}}}}
  secret_env:
    - {{env: AZURE_API_KEY, secret_name: llm-keys, key: azure}}
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def kube():
    # Short watches make the client reconnect (from its last resourceVersion) during a test.
    with FakeKube(max_watch_seconds=0.5) as server:
        yield server


@pytest.fixture
def kubeconfig(kube: FakeKube, tmp_path: Path) -> Path:
    return kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)


def kdist(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def operator(kubeconfig: Path, steps: list[dict], pod_log: str | None, kube: FakeKube):
    """Play KubeRay: once the RayJob exists, move its status through `steps` with the real
    client's /status subresource, and start a submitter pod that has logs."""

    def run() -> None:
        api = kube_config.new_client_from_config(config_file=str(kubeconfig))
        custom = client.CustomObjectsApi(api)
        deadline = time.monotonic() + 10
        while kube.get(RAYJOBS, NAMESPACE, NAME) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if pod_log is not None:
            kube.add_pod(NAMESPACE, f"{NAME}-x7k2p", {"job-name": NAME}, pod_log)
        for status in steps:
            time.sleep(0.3)  # longer than nothing, shorter than a watch: mixes both cases
            custom.patch_namespaced_custom_object_status(
                "ray.io", "v1", NAMESPACE, "rayjobs", NAME, {"status": status}
            )
        api.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_submit_creates_the_rayjob_and_its_owned_configmap(capsys, kube, kubeconfig, config_path):
    code, out, err = kdist(capsys, "submit", "-c", str(config_path), "--no-wait",
                           "--kubeconfig", str(kubeconfig), "train.max_steps=5")
    assert code == 0, err
    rayjob = kube.get(RAYJOBS, NAMESPACE, NAME)
    config = load_config(config_path, ["train.max_steps=5"])
    assert rayjob["spec"] == build_rayjob(config, NAME, "run")["spec"]
    assert kuberay_schema.operator_errors(rayjob) == []
    configmap = kube.get(CONFIGMAPS, NAMESPACE, f"{NAME}-config")
    assert core_errors(configmap) == []
    (owner,) = configmap["metadata"]["ownerReferences"]
    uid = rayjob["metadata"]["uid"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("RayJob", NAME, uid)
    shipped = yaml.safe_load(configmap["data"]["config.yaml"])
    assert shipped["train"]["max_steps"] == 5
    assert f"created RayJob {NAMESPACE}/{NAME}" in out
    assert f"/outputs/{NAME} on PVC kdist-outputs" in out
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    env = {var["name"]: var for var in worker["containers"][0]["env"]}
    assert env["AZURE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "llm-keys", "key": "azure"}


def test_submit_follows_the_status_through_a_watch_until_success(
    capsys, kube, kubeconfig, config_path
):
    steps = [
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING",
         "dashboardURL": "tiny-distil-head-svc.ml-team.svc:8265"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},  # no visible change
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
    ]
    thread = operator(kubeconfig, steps, "evaluate: student accuracy 0.97\n", kube)
    started = time.monotonic()
    code, out, err = kdist(capsys, "submit", "-c", str(config_path),
                           "--kubeconfig", str(kubeconfig), "--timeout", "20")
    thread.join(5)
    assert code == 0, err
    lines = [line.split(": ", 1)[1] for line in out.splitlines() if f" {NAME}: " in line]
    assert lines == [
        "Initializing",
        "Running, job PENDING",
        "Running, job RUNNING",
        "Complete, job SUCCEEDED",
    ]
    assert "evaluate: student accuracy 0.97" in out
    assert f"succeeded; outputs: /outputs/{NAME} on PVC kdist-outputs" in out
    watches = [path for method, path in kube.requests if "watch=" in path]
    assert len(watches) >= 2, "expected the client to re-watch after server-side timeouts"
    assert all("resourceVersion=" in path for path in watches)
    assert time.monotonic() - started < 10


def test_a_failed_job_exits_non_zero_with_the_reason(capsys, kube, kubeconfig, config_path):
    steps = [{"jobDeploymentStatus": "Complete", "jobStatus": "FAILED",
              "message": "teacher accuracy 0.21 is not above chance"}]
    operator(kubeconfig, steps, None, kube).join(0)
    code, out, _ = kdist(capsys, "submit", "-c", str(config_path),
                         "--kubeconfig", str(kubeconfig), "--timeout", "20")
    assert code == 1
    assert "did not succeed: Complete, job FAILED: teacher accuracy 0.21 is not above chance" in out


def test_following_stops_at_the_timeout_while_the_job_runs(capsys, kube, kubeconfig, config_path):
    operator(kubeconfig, [{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}], None, kube)
    started = time.monotonic()
    code, out, _ = kdist(capsys, "submit", "-c", str(config_path),
                         "--kubeconfig", str(kubeconfig), "--timeout", "1.5")
    assert code == 1
    assert "still running after 1.5 s" in out
    assert 1.4 < time.monotonic() - started < 6


def test_a_name_conflict_is_refused_and_leaves_the_first_job_alone(
    capsys, kube, kubeconfig, config_path
):
    assert kdist(capsys, "submit", "-c", str(config_path), "--no-wait",
                 "--kubeconfig", str(kubeconfig))[0] == 0
    first = kube.get(RAYJOBS, NAMESPACE, NAME)
    code, _, err = kdist(capsys, "submit", "-c", str(config_path), "--no-wait",
                         "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert err.count("\n") == 1
    assert f"RayJob {NAME} in namespace {NAMESPACE} already exists" in err
    assert f"kdist cancel {NAME} --namespace {NAMESPACE}" in err
    assert kube.get(RAYJOBS, NAMESPACE, NAME) == first


def test_status_and_cancel(capsys, kube, kubeconfig, config_path):
    kdist(capsys, "submit", "-c", str(config_path), "--no-wait", "--kubeconfig", str(kubeconfig))
    kube.set_status(NAMESPACE, NAME, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING",
                                      "rayClusterName": f"{NAME}-raycluster-abcde"})
    # The namespace comes from the kubeconfig's context when not given.
    code, out, _ = kdist(capsys, "status", NAME, "--kubeconfig", str(kubeconfig))
    assert code == 0
    assert f"RayJob {NAMESPACE}/{NAME}: Running, job RUNNING" in out
    assert f"rayClusterName: {NAME}-raycluster-abcde" in out

    code, out, _ = kdist(capsys, "cancel", NAME, "-n", NAMESPACE, "--kubeconfig", str(kubeconfig))
    assert code == 0 and "cancelled" in out
    assert kube.get(RAYJOBS, NAMESPACE, NAME) is None
    code, _, err = kdist(capsys, "cancel", NAME, "-n", NAMESPACE, "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert f"RayJob {NAME} in namespace {NAMESPACE} not found" in err


def test_permission_denied_says_who_and_what_to_apply(capsys, tmp_path, config_path):
    with FakeKube(forbidden=True) as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kc")
        code, _, err = kdist(capsys, "submit", "-c", str(config_path), "--no-wait",
                             "--kubeconfig", str(kubeconfig))
        assert kube.objects == {}
    assert code == 1
    assert err.startswith(f"kdist: permission denied to create RayJob {NAME} in namespace ")
    assert f'User "{kube.user}" cannot create resource "rayjobs"' in err
    assert "k8s/rbac.yaml" in err


def test_missing_kuberay_crd_is_named(capsys, tmp_path, config_path):
    with FakeKube(crd_installed=False) as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kc")
        code, _, err = kdist(capsys, "submit", "-c", str(config_path), "--no-wait",
                             "--kubeconfig", str(kubeconfig))
        assert code == 1
        assert "the RayJob CRD (rayjobs.ray.io/v1) is not installed" in err
        assert kube.get(CONFIGMAPS, NAMESPACE, f"{NAME}-config") is None
        code, _, err = kdist(capsys, "status", NAME, "--kubeconfig", str(kubeconfig))
        assert code == 1 and "KubeRay operator" in err


def test_a_configmap_failure_takes_the_rayjob_back(capsys, kube, kubeconfig, config_path):
    stale = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{NAME}-config"}}
    kube.create(CONFIGMAPS, NAMESPACE, stale)
    code, _, err = kdist(capsys, "submit", "-c", str(config_path), "--no-wait",
                         "--kubeconfig", str(kubeconfig))
    assert code == 1 and f"ConfigMap {NAME}-config in namespace {NAMESPACE} already exists" in err
    assert kube.get(RAYJOBS, NAMESPACE, NAME) is None


def test_no_kubeconfig(capsys, tmp_path, config_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = kdist(capsys, "submit", "-c", str(config_path), "--no-wait")
    assert code == 1
    assert err.startswith("kdist: no usable Kubernetes credentials")
    assert "KUBECONFIG" in err


def test_bad_credentials_and_unreachable_server(capsys, kube, tmp_path, config_path):
    kubeconfig = kube.write_kubeconfig(tmp_path / "kc")
    text = kubeconfig.read_text().replace(kube.token, "stale-token")
    kubeconfig.write_text(text)
    code, _, err = kdist(capsys, "status", NAME, "--kubeconfig", str(kubeconfig))
    assert code == 1 and "rejected the credentials (401)" in err
    assert "stale-token" not in err

    port = free_loopback_port()  # nothing listens on it
    kubeconfig.write_text(text.replace(kube.url, f"http://127.0.0.1:{port}"))
    code, _, err = kdist(capsys, "status", NAME, "--kubeconfig", str(kubeconfig))
    assert code == 1 and f"cannot reach the Kubernetes API at http://127.0.0.1:{port}" in err


def test_schema_rejection_is_a_one_line_422(kube, kubeconfig, config_path):
    rayjob = build_rayjob(load_config(config_path), NAME)
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2  # a typo
    api = kube_config.new_client_from_config(config_file=str(kubeconfig))
    with pytest.raises(KubeError) as raised:
        with explained(api, "create", f"RayJob {NAME}", NAMESPACE):
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "ray.io", "v1", NAMESPACE, "rayjobs", rayjob
            )
    message = str(raised.value)
    assert message.startswith(f"the API server rejected RayJob {NAME} in namespace {NAMESPACE}")
    assert "'replica' was unexpected" in message
    assert kube.get(RAYJOBS, NAMESPACE, NAME) is None


def test_dry_run_and_chart_values_need_no_cluster(capsys, config_path, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    code, out, _ = kdist(capsys, "submit", "-c", str(config_path), "--dry-run", "--stage", "train")
    assert code == 0
    configmap, rayjob = yaml.safe_load_all(out)
    assert rayjob == build_rayjob(load_config(config_path), NAME, "train")
    assert configmap["kind"] == "ConfigMap"
    code, out, _ = kdist(capsys, "submit", "-c", str(config_path), "--print-values")
    values = yaml.safe_load(out)
    assert values["worker"]["resources"]["gpu"] == 8


def test_dry_run_renders_a_restricted_submitter_and_pull_secrets_for_every_pod(
    capsys, config_path
):
    code, out, err = kdist(capsys, "submit", "-c", str(config_path), "--dry-run",
                           "cluster.image=registry.corp.example:5000/ml/kdist:1.2",
                           "cluster.image_pull_secrets=[corp-registry, corp-mirror]")
    assert code == 0, err
    _, rayjob = yaml.safe_load_all(out)
    pods = dict(pod_templates(rayjob))
    assert set(pods) == {"head", "worker group workers", "submitter"}
    for where, template in pods.items():
        spec = template["spec"]
        assert spec["imagePullSecrets"] == [{"name": "corp-registry"}, {"name": "corp-mirror"}]
        assert spec["containers"][0]["image"] == "registry.corp.example:5000/ml/kdist:1.2", where
    submitter = pods["submitter"]
    component = {"app.kubernetes.io/component": "ray-submitter"}
    assert submitter["metadata"]["labels"] == {**rayjob["metadata"]["labels"], **component}
    assert submitter["spec"]["automountServiceAccountToken"] is False
    limits = submitter["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "1", "memory": "1Gi"}
    assert restricted_profile_errors(rayjob) == []
    assert core_errors(rayjob) == []
    assert kuberay_schema.rayjob_errors(rayjob) == []
    # Without the setting, no pod names a pull secret.
    _, plain = yaml.safe_load_all(kdist(capsys, "submit", "-c", str(config_path), "--dry-run")[1])
    assert all("imagePullSecrets" not in t["spec"] for _, t in pod_templates(plain))


def test_a_bad_pull_secret_name_is_a_one_line_usage_error(capsys, config_path):
    code, out, err = kdist(capsys, "submit", "-c", str(config_path), "--dry-run",
                           "cluster.image_pull_secrets=[Corp_Registry]")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "'cluster.image_pull_secrets'" in err
    assert "'Corp_Registry' is not a Secret name" in err


def test_a_demo_config_runs_the_demo_stage_by_default(capsys):
    demo_config = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    code, out, _ = kdist(capsys, "submit", "-c", str(demo_config), "--dry-run")
    assert code == 0
    _, rayjob = yaml.safe_load_all(out)
    assert rayjob["spec"]["entrypoint"].startswith("python /opt/kdist/ray_jobs/job.py demo ")


@pytest.mark.parametrize(
    "name", ["Tiny-Distil", "tiny_distil", "9-lives", "-lead", "a" * (kuberay_schema.MAX_RAYJOB_NAME + 1)]
)
def test_submit_refuses_a_name_that_is_no_rayjob_name_before_any_request(capsys, kube, kubeconfig, config_path, name):
    code, out, err = kdist(capsys, "submit", "-c", str(config_path), f"--name={name}", "--no-wait",
                           "--kubeconfig", str(kubeconfig))  # fmt: skip
    assert code == 2 and out == ""
    assert f"RayJob name '{name}' must be a lowercase DNS label" in err
    assert f"at most {kuberay_schema.MAX_RAYJOB_NAME} characters" in err
    assert kube.get(RAYJOBS, NAMESPACE, name) is None and kube.get(RAYJOBS, NAMESPACE, NAME) is None


def test_submit_takes_the_longest_name_kuberay_allows(capsys, kube, kubeconfig, config_path):
    name = "a" + "-b" * ((kuberay_schema.MAX_RAYJOB_NAME - 1) // 2)
    assert len(name) == kuberay_schema.MAX_RAYJOB_NAME
    code, _, err = kdist(capsys, "submit", "-c", str(config_path), "--name", name, "--no-wait",
                         "--kubeconfig", str(kubeconfig))  # fmt: skip
    assert code == 0, err
    assert kube.get(RAYJOBS, NAMESPACE, name)["metadata"]["name"] == name
    assert kube.get(CONFIGMAPS, NAMESPACE, f"{name}-config") is not None


def test_status_of_a_job_the_operator_has_not_seen_yet(capsys, kube, kubeconfig, config_path):
    kdist(capsys, "submit", "-c", str(config_path), "--no-wait", "--kubeconfig", str(kubeconfig))
    assert "status" not in kube.get(RAYJOBS, NAMESPACE, NAME)
    code, out, err = kdist(capsys, "status", NAME, "--kubeconfig", str(kubeconfig))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"RayJob {NAMESPACE}/{NAME}: New"
    assert lines[1].startswith("  entrypoint: ") and "ray_jobs/job.py" in lines[1] and len(lines) == 2


def test_context_picks_the_kubeconfig_context_and_its_namespace(capsys, kube, tmp_path, config_path):
    """The current context points at a server where nothing listens; --context fake reaches
    the loopback API, and its namespace is the default one."""
    path = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    doc = yaml.safe_load(path.read_text())
    doc["clusters"].append({"name": "gone", "cluster": {"server": f"http://127.0.0.1:{free_loopback_port()}"}})
    doc["contexts"].append({"name": "gone", "context": {"cluster": "gone", "user": "fake", "namespace": "elsewhere"}})
    doc["current-context"] = "gone"
    path.write_text(yaml.safe_dump(doc))
    code, _, err = kdist(capsys, "submit", "-c", str(config_path), "--no-wait", "--kubeconfig", str(path))
    assert code == 1 and "cannot reach the Kubernetes API" in err
    code, out, err = kdist(capsys, "submit", "-c", str(config_path), "--no-wait", "--kubeconfig", str(path), "--context", "fake")
    assert code == 0, err
    assert kube.get(RAYJOBS, NAMESPACE, NAME) is not None
    code, out, err = kdist(capsys, "status", NAME, "--kubeconfig", str(path), "--context", "fake")
    assert code == 0 and out.startswith(f"RayJob {NAMESPACE}/{NAME}: New")
    code, _, err = kdist(capsys, "status", NAME, "--kubeconfig", str(path), "--context", "nope")
    assert code != 0 and "nope" in err
