"""Checks shared by the chart tests and the plain-manifest tests (test helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

KUBE_VERSION = "1.32.0"
# What KubeRay submits without a submitterPodTemplate (common/job.go, v1.7.0): the head's image
# and pull secrets, nothing else.
KUBERAY_DEFAULT_SUBMITTER = {
    "spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "ray-job-submitter", "image": "the head's"}],
    }
}


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod an object makes: Ray head/workers, the RayJob's
    submitter, Deployments. A RayJob without its own submitter template fails the checks:
    KubeRay's default is a bare container (no security context, no pull secrets)."""
    if obj["kind"] == "RayJob":
        cluster = obj["spec"]["rayClusterSpec"]
        yield "head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"worker group {group['groupName']}", group["template"]
        yield "submitter", obj["spec"].get("submitterPodTemplate", KUBERAY_DEFAULT_SUBMITTER)
    elif obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        yield obj["kind"], obj["spec"]["template"]


def as_pod_template_object(template: dict[str, Any]) -> dict[str, Any]:
    """A core v1 PodTemplate around a template, so the core schemas can check it strictly."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": template,
    }


def core_errors(obj: dict[str, Any], version: str = KUBE_VERSION) -> list[str]:
    """Strict validation against the Kubernetes schemas; RayJob pod templates included."""
    import kubernetes_validate

    found = []
    targets = [obj] if obj["kind"] != "RayJob" else []
    targets += [as_pod_template_object(t) for _, t in pod_templates(obj)]
    for target in targets:
        try:
            kubernetes_validate.validate(target, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.absolute_path)
            found.append(f"{obj['kind']} {path}: {err.message}")
    return found


def restricted_profile_errors(obj: dict[str, Any]) -> list[str]:
    """Departures from the "restricted" Pod Security Standard (and token mounting)."""
    errors = []
    for where, template in pod_templates(obj):
        spec = template["spec"]
        pod_sc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False and not _autoscaled_head(
            obj, where
        ):
            errors.append(f"{where}: service account token mounted")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errors.append(f"{where}: seccompProfile is not RuntimeDefault")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            errors.append(f"{where}: host namespaces")
        for container in spec.get("initContainers", []) + spec["containers"]:
            sc = container.get("securityContext", {})
            name = f"{where} container {container['name']}"
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                errors.append(f"{name}: may run as root")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{name}: privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                errors.append(f"{name}: capabilities not all dropped")
            if sc.get("privileged"):
                errors.append(f"{name}: privileged")
    return errors


def _autoscaled_head(obj: dict[str, Any], where: str) -> bool:
    """The Ray autoscaler runs beside the head and needs the API (KubeRay binds its Role)."""
    cluster = obj.get("spec", {}).get("rayClusterSpec", {})
    return where == "head" and bool(cluster.get("enableInTreeAutoscaling"))
