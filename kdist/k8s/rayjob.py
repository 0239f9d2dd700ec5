"""The KubeRay RayJob (and the ConfigMap holding its run config) built from a run config.

One builder for everything that makes a RayJob: `kdist submit` creates these objects, the plain
manifests under k8s/ are printed by it (`kdist submit --dry-run`), and the chart's tests check
that helm/kdist renders the same RayJob from the values `chart_values` derives from a config.
"""

from __future__ import annotations

import re
from typing import Any

from kdist.config import ClusterSection, PodGroupSection, ResourcesSection, RunConfig
from kdist.stages import JOB_COMMANDS
from kdist.k8s.shipped_config import ShippedConfig

API_VERSION = "ray.io/v1"
GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
# The Ray release in the image; head, workers and submitter must agree (pyproject pins it).
RAY_VERSION = "2.60.0"
# Where the image keeps the ray_jobs/ entrypoints (see Dockerfile).
APP_DIR = "/opt/kdist"
CONFIG_DIR = "/etc/kdist"
CONFIG_FILE = "config.yaml"
CACHE_DIR = "/cache"
OUTPUTS_DIR = "/outputs"
# Non-root uid/gid of the image's user (Dockerfile), also the owner of mounted volumes.
RUN_AS = 1000
# KubeRay's name for the submitter container (the first container of the submitter pod).
SUBMITTER_CONTAINER = "ray-job-submitter"
# The submitter runs `ray job submit` and then `ray job logs --follow`: one small Python
# process, idle but for the log stream. KubeRay's own default asks 500m/200Mi, limits 1/1Gi.
SUBMITTER_RESOURCES = {
    "requests": {"cpu": "200m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
# KubeRay derives RayCluster and Service names from the RayJob's; it refuses longer names.
MAX_NAME_LENGTH = 47
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def job_name(config: RunConfig) -> str:
    """A RayJob name from run.name: lowercase DNS label, at most MAX_NAME_LENGTH characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", config.run.name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:MAX_NAME_LENGTH].rstrip("-")
    return name or "kdist"


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _DNS_LABEL.match(name):
        raise ValueError(
            f"RayJob name '{name}' must be a lowercase DNS label (a-z, 0-9, '-', starting with a"
            f" letter) of at most {MAX_NAME_LENGTH} characters"
        )
    return name


def configmap_name(name: str) -> str:
    return f"{name}-config"


def output_dir(cluster: ClusterSection, name: str, config: RunConfig) -> str:
    """Where the job writes: a folder per RayJob on the outputs PVC, else the config's own."""
    return f"{OUTPUTS_DIR}/{name}" if cluster.outputs_pvc else config.run.output_dir


def entrypoint(stage: str, name: str, config: RunConfig) -> str:
    if stage not in JOB_COMMANDS:
        raise ValueError(f"stage '{stage}' is not one of: {', '.join(JOB_COMMANDS)}")
    command = f"python {APP_DIR}/ray_jobs/job.py {stage} --config {CONFIG_DIR}/{CONFIG_FILE}"
    if config.cluster.outputs_pvc:
        command += f" run.output_dir={output_dir(config.cluster, name, config)}"
    return command


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kdist", "app.kubernetes.io/instance": name}


def object_labels(name: str) -> dict[str, str]:
    return {**selector_labels(name), "app.kubernetes.io/managed-by": "kdist"}


def build_configmap(run: ShippedConfig, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(name),
            "namespace": run.config.cluster.namespace,
            "labels": object_labels(name),
        },
        # Redacted; API keys reach the pods from Secrets through cluster.secret_env.
        "data": {CONFIG_FILE: run.to_yaml()},
    }


def build_rayjob(config: RunConfig, name: str, stage: str = "run") -> dict[str, Any]:
    check_name(name)
    cluster = config.cluster
    spec: dict[str, Any] = {
        "entrypoint": entrypoint(stage, name, config),
        # Lifecycle defaults that do not leak clusters or hang submitters.
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
        "activeDeadlineSeconds": cluster.active_deadline_seconds,
        "backoffLimit": cluster.backoff_limit,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": ray_cluster_spec(cluster, name),
        # Ours, not KubeRay's bare default (no security context, no pull secrets): a namespace
        # enforcing the restricted profile rejects that one, a private registry cannot serve it.
        "submitterPodTemplate": submitter_pod_template(cluster, name),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": cluster.namespace, "labels": object_labels(name)},
        "spec": spec,
    }


def ray_cluster_spec(cluster: ClusterSection, name: str) -> dict[str, Any]:
    workers = cluster.workers
    spec: dict[str, Any] = {"rayVersion": RAY_VERSION}
    if cluster.autoscaling:
        spec["enableInTreeAutoscaling"] = True
        spec["autoscalerOptions"] = {
            "idleTimeoutSeconds": 60,
            "upscalingMode": "Default",
            "securityContext": container_security_context(),
        }
    spec["headGroupSpec"] = {
        "rayStartParams": {},
        "template": pod_template(cluster, cluster.head, name, "ray-head"),
    }
    spec["workerGroupSpecs"] = [
        {
            "groupName": "workers",
            "replicas": workers.replicas,
            "minReplicas": workers.min_replicas,
            "maxReplicas": workers.max_replicas,
            "rayStartParams": {},
            "template": pod_template(cluster, workers, name, "ray-worker"),
        }
    ]
    return spec


def pod_template(
    cluster: ClusterSection, group: PodGroupSection, name: str, component: str
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "serviceAccountName": cluster.service_account,
        # Ray pods never call the Kubernetes API, except the autoscaler beside the head.
        "automountServiceAccountToken": cluster.autoscaling and component == "ray-head",
        "securityContext": pod_security_context(),
    }
    if cluster.image_pull_secrets:
        pod["imagePullSecrets"] = image_pull_secrets(cluster)
    if group.node_selector:
        pod["nodeSelector"] = dict(group.node_selector)
    if group.tolerations:
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in group.tolerations]
    if group.affinity:
        pod["affinity"] = group.affinity
    pod["containers"] = [
        {
            "name": component,
            "image": cluster.image,
            "imagePullPolicy": cluster.image_pull_policy,
            "resources": resources(group.resources),
            "env": env(cluster),
            "securityContext": container_security_context(),
            "volumeMounts": volume_mounts(cluster),
        }
    ]
    pod["volumes"] = volumes(cluster, name)
    labels = {**selector_labels(name), "app.kubernetes.io/component": component}
    return {"metadata": {"labels": labels}, "spec": pod}


def submitter_pod_template(cluster: ClusterSection, name: str) -> dict[str, Any]:
    """KubeRay's submitter pod (a Job of the RayJob's name): restricted like the Ray pods.

    No command: KubeRay fills in `ray job submit` and `ray job logs --follow`, which is what
    `kdist logs` reads from this pod.
    """
    pod: dict[str, Any] = {
        "serviceAccountName": cluster.service_account,
        # It talks to the Ray dashboard only, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        # Retries are the Job's (a new pod each), as with KubeRay's default template.
        "restartPolicy": "Never",
        "securityContext": pod_security_context(),
    }
    if cluster.image_pull_secrets:
        pod["imagePullSecrets"] = image_pull_secrets(cluster)
    pod["containers"] = [
        {
            "name": SUBMITTER_CONTAINER,
            # The head's image: the Ray CLI must match the cluster's Ray.
            "image": cluster.image,
            "imagePullPolicy": cluster.image_pull_policy,
            "resources": {key: dict(value) for key, value in SUBMITTER_RESOURCES.items()},
            "securityContext": container_security_context(),
        }
    ]
    labels = {**object_labels(name), "app.kubernetes.io/component": "ray-submitter"}
    return {"metadata": {"labels": labels}, "spec": pod}


def image_pull_secrets(cluster: ClusterSection) -> list[dict[str, str]]:
    return [{"name": secret} for secret in cluster.image_pull_secrets]


def resources(section: ResourcesSection) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": section.cpu, "memory": section.memory}
    if section.gpu:
        amounts["nvidia.com/gpu"] = section.gpu
    # Requests equal limits: Ray sizes itself from the limits, and the pod gets what Ray assumes.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def env(cluster: ClusterSection) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = []
    if cluster.cache_pvc:
        variables.append({"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"})
    for ref in cluster.secret_env:
        variables.append(
            {
                "name": ref.env,
                "valueFrom": {"secretKeyRef": {"name": ref.secret_name, "key": ref.key}},
            }
        )
    return variables


def volume_mounts(cluster: ClusterSection) -> list[dict[str, Any]]:
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        # Ray's object store and NCCL want a large /dev/shm; the container default is 64 MiB.
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if cluster.cache_pvc:
        mounts.append({"name": "cache", "mountPath": CACHE_DIR})
    if cluster.outputs_pvc:
        mounts.append({"name": "outputs", "mountPath": OUTPUTS_DIR})
    return mounts


def volumes(cluster: ClusterSection, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": configmap_name(name)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    if cluster.cache_pvc:
        found.append({"name": "cache", "persistentVolumeClaim": {"claimName": cluster.cache_pvc}})
    if cluster.outputs_pvc:
        found.append(
            {"name": "outputs", "persistentVolumeClaim": {"claimName": cluster.outputs_pvc}}
        )
    return found


def pod_security_context() -> dict[str, Any]:
    """The "restricted" Pod Security Standard, pod level."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }
