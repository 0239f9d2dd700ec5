"""The Helm chart, rendered by the real Helm engine (helm-python-sdk), checked like a cluster would.

Every core object is validated strictly against the Kubernetes schemas, every RayJob against
KubeRay's v1 CRD schema plus the operator's own rules, and the chart must render the same
RayJob as `kdist submit` builds from a run config.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_python = pytest.importorskip("helm_python")

from kdist.config import validate_config  # noqa: E402
from kdist.k8s.chart_values import chart_values  # noqa: E402
from kdist.k8s.rayjob import build_configmap, build_rayjob  # noqa: E402
from kdist.k8s.shipped_config import shipped  # noqa: E402
from support import kuberay_schema  # noqa: E402
from support.manifests import (  # noqa: E402
    core_errors,
    documents,
    pod_templates,
    restricted_profile_errors,
)

CHART = Path(__file__).resolve().parents[2] / "helm" / "kdist"
DEMO_CONFIG = CHART.parents[1] / "configs" / "demo.yaml"
RELEASE, NAMESPACE = "distil-7b", "ml-team"

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "8 gpus per worker": {
        "worker": {
            "replicas": 2,
            "minReplicas": 2,
            "maxReplicas": 2,
            "resources": {"cpu": "96", "memory": "1000Gi", "gpu": 8},
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [GPU_TOLERATION],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {
                                    "matchLabels": {"app.kubernetes.io/component": "ray-worker"}
                                },
                            },
                        }
                    ]
                }
            },
        },
        "head": {"nodeSelector": {"node-pool": "cpu"}},
        "imagePullSecrets": [{"name": "registry"}],
    },
    "existing secret": {
        "secrets": {
            "existingSecret": "llm-api-keys",
            "env": [
                {"name": "AZURE_OPENAI_API_KEY", "key": "azure"},
                {"name": "JUDGE_API_KEY", "key": "judge", "secretName": "judge-keys"},
            ],
        },
        "persistence": {"cache": {"existingClaim": "shared-model-cache"}},
    },
    "created secret": {
        "secrets": {
            "create": True,
            "values": {"openai": "sk-test-not-a-real-key"},
            "env": [{"name": "OPENAI_API_KEY", "key": "openai"}],
        },
    },
    "llm server on": {
        "llmServer": {
            "enabled": True,
            "model": "/cache/models/judge-8b",
            "servedModelName": "judge",
            "extraArgs": ["--max-model-len=8192"],
            "apiKeySecretKey": "judge",
            "tolerations": [GPU_TOLERATION],
        },
        "secrets": {"existingSecret": "llm-api-keys"},
    },
    "private registry": {
        "image": {"repository": "registry.corp.example:5000/ml/kdist", "tag": "1.2"},
        "imagePullSecrets": [{"name": "corp-registry"}, {"name": "corp-mirror"}],
        "llmServer": {"enabled": True, "model": "/cache/models/judge-8b"},
    },
    "autoscaling": {
        "autoscaling": {"enabled": True, "idleTimeoutSeconds": 120},
        "worker": {"replicas": 0, "minReplicas": 0, "maxReplicas": 8},
        "persistence": {"outputs": {"enabled": False}},
        "stage": "generate",
    },
}


@pytest.fixture(scope="module")
def chart():
    return helm_python.Chart.load(str(CHART))


def render(chart, values: dict[str, Any], name: str = RELEASE) -> dict[str, str]:
    return chart.render(copy.deepcopy(values), name=name, namespace=NAMESPACE, is_install=True)


def objects(chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for path, text in render(chart, values).items():
        if not path.endswith("NOTES.txt"):
            found += documents(text)
    return found


def one(found: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [obj for obj in found if obj["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def crd_folder() -> str:
    return str(kuberay_schema.require_crd_dir())  # missing CRDs fail, saying where they go


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_core_objects_are_valid_kubernetes(chart, scenario):
    found = objects(chart, SCENARIOS[scenario])
    for version in ("1.25.0", "1.32.0"):
        errors = [error for obj in found for error in core_errors(obj, version)]
        assert errors == [], f"{scenario} on {version}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rayjob_is_valid_for_kuberay(chart, scenario):
    folder = crd_folder()
    rayjob = one(objects(chart, SCENARIOS[scenario]), "RayJob")
    assert kuberay_schema.rayjob_errors(rayjob, folder) == []


def test_kuberay_check_rejects_what_the_api_server_would(chart):
    """The validator itself must be able to fail: a typo and an operator rule."""
    folder = crd_folder()
    rayjob = one(objects(chart, {}), "RayJob")
    rayjob["spec"]["shutdownAfterJobFinishes"] = False
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    errors = kuberay_schema.rayjob_errors(rayjob, folder)
    assert any("maxReplica" in error for error in errors)
    assert any("ttlSecondsAfterFinished" in error for error in errors)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_follow_the_restricted_profile(chart, scenario):
    found = objects(chart, SCENARIOS[scenario])
    assert [error for obj in found for error in restricted_profile_errors(obj)] == []
    account = [obj for obj in found if obj["kind"] == "ServiceAccount"]
    assert all(obj["automountServiceAccountToken"] is False for obj in account)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_carries_the_standard_labels(chart, scenario):
    for obj in objects(chart, SCENARIOS[scenario]):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kdist"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert obj["metadata"]["namespace"] == NAMESPACE


def test_lifecycle_defaults_do_not_leak_clusters(chart):
    spec = one(objects(chart, {}), "RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] == 0
    # The default config is the offline demo, so the default stage is the demo.
    assert spec["entrypoint"] == (
        f"python /opt/kdist/ray_jobs/job.py demo --config /etc/kdist/config.yaml"
        f" run.output_dir=/outputs/{RELEASE}"
    )
    with_config = {"config": {"teacher": {"model": "t"}, "student": {"model": "s"}}}
    entrypoint = one(objects(chart, with_config), "RayJob")["spec"]["entrypoint"]
    assert entrypoint.startswith("python /opt/kdist/ray_jobs/job.py run ")


def test_eight_gpus_are_requested_and_limited(chart):
    rayjob = one(objects(chart, SCENARIOS["8 gpus per worker"]), "RayJob")
    cluster = rayjob["spec"]["rayClusterSpec"]
    worker = cluster["workerGroupSpecs"][0]
    pod = worker["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == 8
    assert resources["limits"]["nvidia.com/gpu"] == 8
    assert resources["limits"]["memory"] == "1000Gi"
    assert (worker["replicas"], worker["minReplicas"], worker["maxReplicas"]) == (2, 2, 2)
    assert pod["tolerations"] == [GPU_TOLERATION]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert "podAntiAffinity" in pod["affinity"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    assert head["nodeSelector"] == {"node-pool": "cpu"}
    assert "tolerations" not in head


def test_private_registry_reaches_every_pod_and_the_submitter_is_ours(chart):
    found = objects(chart, SCENARIOS["private registry"])
    rayjob = one(found, "RayJob")
    pods = dict(pod_templates(rayjob))
    pods["llm server"] = one(found, "Deployment")["spec"]["template"]
    assert set(pods) == {"head", "worker group workers", "submitter", "llm server"}
    image = "registry.corp.example:5000/ml/kdist:1.2"
    for where, template in pods.items():
        spec = template["spec"]
        assert spec["imagePullSecrets"] == [{"name": "corp-registry"}, {"name": "corp-mirror"}]
        assert spec["containers"][0]["image"] == image, where
    submitter = pods["submitter"]
    assert submitter["metadata"]["labels"] == {
        **rayjob["metadata"]["labels"],
        "app.kubernetes.io/component": "ray-submitter",
    }
    spec = submitter["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    # KubeRay takes the first container as the submitter and fills in its command.
    assert container["name"] == "ray-job-submitter" and "command" not in container
    assert container["resources"] == {
        "requests": {"cpu": "200m", "memory": "512Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert restricted_profile_errors(rayjob) == []
    # Without pull secrets in the values, no pod names any.
    default = one(objects(chart, {}), "RayJob")
    assert all("imagePullSecrets" not in t["spec"] for _, t in pod_templates(default))


def test_restricted_checks_reject_kuberays_default_submitter(chart):
    """The check can fail: a RayJob that leaves the submitter to KubeRay's default."""
    rayjob = one(objects(chart, {}), "RayJob")
    del rayjob["spec"]["submitterPodTemplate"]
    errors = restricted_profile_errors(rayjob)
    assert "submitter: service account token mounted" in errors
    assert "submitter: seccompProfile is not RuntimeDefault" in errors
    assert "submitter container ray-job-submitter: privilege escalation allowed" in errors


def secret_refs(rayjob: dict[str, Any]) -> dict[str, tuple[str, str]]:
    refs = {}
    for _, template in pod_templates(rayjob):
        for var in template["spec"]["containers"][0].get("env", []):
            if "valueFrom" in var:
                ref = var["valueFrom"]["secretKeyRef"]
                refs[var["name"]] = (ref["name"], ref["key"])
    return refs


def test_existing_secret_is_referenced_not_created(chart):
    found = objects(chart, SCENARIOS["existing secret"])
    assert not [obj for obj in found if obj["kind"] == "Secret"]
    assert secret_refs(one(found, "RayJob")) == {
        "AZURE_OPENAI_API_KEY": ("llm-api-keys", "azure"),
        "JUDGE_API_KEY": ("judge-keys", "judge"),
    }
    claims = [obj["metadata"]["name"] for obj in found if obj["kind"] == "PersistentVolumeClaim"]
    assert claims == [f"{RELEASE}-outputs"]  # the cache is an existing claim
    volumes = one(found, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    claim_names = {
        v["persistentVolumeClaim"]["claimName"]
        for v in volumes["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claim_names == {"shared-model-cache", f"{RELEASE}-outputs"}


def test_created_secret_holds_the_values_and_is_referenced(chart):
    found = objects(chart, SCENARIOS["created secret"])
    secret = one(found, "Secret")
    assert secret["stringData"] == {"openai": "sk-test-not-a-real-key"}
    assert secret_refs(one(found, "RayJob")) == {
        "OPENAI_API_KEY": (secret["metadata"]["name"], "openai")
    }
    # The key is in the Secret only, never in the ConfigMap or the RayJob.
    for obj in found:
        if obj["kind"] != "Secret":
            assert "sk-test-not-a-real-key" not in yaml.safe_dump(obj)


def test_llm_server_is_served_and_reachable_by_its_service(chart):
    found = objects(chart, SCENARIOS["llm server on"])
    deployment, service = one(found, "Deployment"), one(found, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--model=/cache/models/judge-8b" in container["args"]
    assert "--served-model-name=judge" in container["args"]
    assert "--max-model-len=8192" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["ports"][0]["containerPort"] == service["spec"]["ports"][0]["port"]
    key = next(v for v in container["env"] if v["name"] == "VLLM_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "llm-api-keys", "key": "judge"}
    notes = render(chart, SCENARIOS["llm server on"])["kdist/templates/NOTES.txt"]
    assert f"http://{RELEASE}-llm.{NAMESPACE}.svc:8000/v1" in notes


def test_autoscaling_enables_the_ray_autoscaler_within_bounds(chart):
    spec = one(objects(chart, SCENARIOS["autoscaling"]), "RayJob")["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 120
    worker = cluster["workerGroupSpecs"][0]
    assert (worker["minReplicas"], worker["maxReplicas"]) == (0, 8)
    assert spec["entrypoint"] == (
        "python /opt/kdist/ray_jobs/job.py generate --config /etc/kdist/config.yaml"
    )
    # The autoscaler beside the head talks to the API; nothing else gets a token.
    assert cluster["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert worker["template"]["spec"]["automountServiceAccountToken"] is False
    default = one(objects(chart, {}), "RayJob")["spec"]["rayClusterSpec"]
    assert "enableInTreeAutoscaling" not in default
    assert default["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_the_default_config_is_the_demo_config():
    shipped_with_chart = CHART / "files" / "config.yaml"
    assert shipped_with_chart.read_text() == DEMO_CONFIG.read_text(), (
        "helm/kdist/files/config.yaml differs from configs/demo.yaml:"
        " cp configs/demo.yaml helm/kdist/files/config.yaml"
    )


def test_configmap_holds_the_run_config_mounted_in_every_pod(chart, tmp_path):
    found = objects(chart, {})
    configmap = one(found, "ConfigMap")
    assert yaml.safe_load(configmap["data"]["config.yaml"]) == yaml.safe_load(
        DEMO_CONFIG.read_text()
    )
    with_config = {"config": {"teacher": {"model": "t"}, "student": {"model": "s"}}}
    mine = one(objects(chart, with_config), "ConfigMap")["data"]["config.yaml"]
    assert validate_config(yaml.safe_load(mine)).teacher.model == "t"
    ray_pods = [t for where, t in pod_templates(one(found, "RayJob")) if where != "submitter"]
    assert len(ray_pods) == 2  # the submitter runs `ray job submit` only: no config, no PVCs
    for template in ray_pods:
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
        mounts = {m["name"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["config"]["mountPath"] == "/etc/kdist"
        env = {v["name"]: v.get("value") for v in template["spec"]["containers"][0]["env"]}
        assert env["HF_HOME"] == "/cache/huggingface"
        assert mounts["cache"]["mountPath"] == "/cache"


def test_notes_tell_how_to_follow_the_job(chart):
    notes = render(chart, {})["kdist/templates/NOTES.txt"]
    assert f"kdist status {RELEASE} --namespace {NAMESPACE}" in notes
    assert f"kdist logs {RELEASE} --namespace {NAMESPACE} --follow" in notes
    assert f"kubectl get rayjob {RELEASE} -n {NAMESPACE} -w" in notes
    assert f"/outputs/{RELEASE} on PVC {RELEASE}-outputs" in notes


BAD_VALUES = {
    "unknown top-level key": ({"workers": {"replicas": 2}}, "workers"),
    "negative gpus": ({"worker": {"resources": {"gpu": -1}}}, "gpu"),
    "gpus as text": ({"worker": {"resources": {"gpu": "eight"}}}, "gpu"),
    "cpu not a quantity": ({"head": {"resources": {"cpu": "lots"}}}, "cpu"),
    "unknown stage": ({"stage": "distill"}, "stage"),
    "zero deadline": ({"job": {"activeDeadlineSeconds": 0}}, "activeDeadlineSeconds"),
    "bad pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "typo in worker": ({"worker": {"maxReplica": 4}}, "maxReplica"),
    "bad toleration effect": ({"worker": {"tolerations": [{"effect": "Never"}]}}, "effect"),
    "bad env name": ({"secrets": {"env": [{"name": "MY-KEY", "key": "k"}]}}, "name"),
    "name too long": ({"fullnameOverride": "x" * 48}, "fullnameOverride"),
    "config without teacher": ({"config": {"student": {"model": "s"}}}, "teacher"),
    "llm server without model": ({"llmServer": {"enabled": True}}, "model"),
    "replicas above max": ({"worker": {"replicas": 3, "maxReplicas": 2}}, "maxReplicas"),
    "two secret sources": (
        {"secrets": {"create": True, "existingSecret": "keys"}},
        "existingSecret",
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_are_rejected(chart, case):
    values, named = BAD_VALUES[case]
    with pytest.raises(helm_python.HelmError) as raised:
        render(chart, values)
    assert named in str(raised.value)


@pytest.mark.parametrize(
    "scenario", ["defaults", "8 gpus per worker", "llm server on", "private registry"]
)
def test_helm_lint_strict_is_clean(scenario):
    report = helm_python.lint(
        str(CHART), copy.deepcopy(SCENARIOS[scenario]), strict=True, kube_version="v1.32.0"
    )
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


CONFIGS = {
    "minimal": {},
    "gpu cluster": {
        "run": {"name": "Qwen 7B -> 0.5B"},
        "cluster": {
            "namespace": "ml-team",
            "image": "registry.local:5000/kdist:1.2",
            "workers": {
                "replicas": 2,
                "min_replicas": 1,
                "max_replicas": 4,
                "resources": {"cpu": "96", "memory": "1000Gi", "gpu": 8},
                "node_selector": {"pool": "h100"},
                "tolerations": [GPU_TOLERATION],
            },
            "image_pull_secrets": ["registry-local", "mirror"],
            "autoscaling": True,
            "secret_env": [{"env": "AZURE_API_KEY", "secret_name": "keys", "key": "azure"}],
            "cache_pvc": None,
        },
    },
}


@pytest.mark.parametrize("case", CONFIGS)
@pytest.mark.parametrize("stage", ["run", "train"])
def test_chart_renders_the_same_rayjob_as_kdist_submit(chart, case, stage):
    raw = {"teacher": {"model": "t"}, "student": {"model": "s"}, **CONFIGS[case]}
    config = validate_config(raw)
    name = "same-shape"
    built = build_rayjob(config, name, stage)
    rendered = render(chart, chart_values(shipped(config), stage), name=name)
    from_chart = documents(rendered["kdist/templates/rayjob.yaml"])[0]
    # The submitter carries its RayJob's labels, which differ (Helm's or kdist's own).
    for rayjob in (from_chart, built):
        labels = rayjob["spec"]["submitterPodTemplate"]["metadata"].pop("labels")
        component = {"app.kubernetes.io/component": "ray-submitter"}
        assert labels == {**rayjob["metadata"]["labels"], **component}
    assert from_chart["spec"] == built["spec"]
    configmap = documents(rendered["kdist/templates/configmap.yaml"])[0]
    expected = build_configmap(shipped(config), name)
    assert configmap["metadata"]["name"] == expected["metadata"]["name"]
    assert yaml.safe_load(configmap["data"]["config.yaml"]) == yaml.safe_load(
        expected["data"]["config.yaml"]
    )
    assert validate_config(yaml.safe_load(configmap["data"]["config.yaml"])) == config


def test_the_chart_stage_list_is_the_stage_registry():
    from kdist.k8s.chart_values import with_registry_stages

    text = (CHART / "values.schema.json").read_text()
    assert with_registry_stages(text) == text, "run `make chart-stages`"
