"""Validate RayJob objects the way a KubeRay v1 API server and operator would (for tests).

The CRDs are test data outside the project (../shared/kuberay/, or $KDIST_KUBERAY_CRDS); they
are read, never copied, and required: without them a test that checks a RayJob fails with a
line that says where to put them (a check that passes in silence would prove nothing).
A plain JSON-schema check of the CRD's openAPIV3Schema is adjusted to what the API server
does: `metadata` is a plain object, required fields that have a default are filled in before
validation, and unknown fields are rejected (strict field validation) where the schema does
not preserve them. `operator_errors` adds rules a schema cannot express.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml

RAYJOB_CRD = "ray.io_rayjobs.yaml"
MAX_RAYJOB_NAME = 47
REPO_ROOT = Path(__file__).resolve().parents[2]


def crd_dir() -> Path:
    """Where the KubeRay CRDs are: $KDIST_KUBERAY_CRDS, else ../shared/kuberay from the repo."""
    override = os.environ.get("KDIST_KUBERAY_CRDS")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "kuberay"


def missing_crds_message(folder: Path) -> str:
    return (
        f"KubeRay CRDs not found: put {RAYJOB_CRD} (KubeRay v1.7.0,"
        f" ray-operator/config/crd/bases/) in {folder}, or set KDIST_KUBERAY_CRDS to the"
        " folder that holds it (never copy it into the repository)"
    )


def require_crd_dir() -> Path:
    """The CRD folder, or a failed test that says where to put the CRDs."""
    import pytest

    folder = crd_dir()
    if not (folder / RAYJOB_CRD).is_file():
        pytest.fail(missing_crds_message(folder), pytrace=False)
    return folder


@functools.lru_cache(maxsize=4)
def rayjob_schema(folder: str | None = None) -> dict[str, Any]:
    path = Path(folder or require_crd_dir()) / RAYJOB_CRD
    # The CRD is 1.4 MB of YAML: the C loader reads it in a fraction of the pure-Python time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 (a safe loader)
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    schema = copy.deepcopy(v1["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    _as_api_server_validates(schema)
    return schema


def _as_api_server_validates(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _as_api_server_validates(item)
        return
    if not isinstance(node, dict):
        return
    properties = node.get("properties")
    if isinstance(properties, dict):
        defaulted = {key for key, sub in properties.items() if "default" in sub}
        if "required" in node:
            node["required"] = [key for key in node["required"] if key not in defaulted]
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
    for key, value in node.items():
        if key != "default":
            _as_api_server_validates(value)


def schema_errors(rayjob: dict[str, Any], folder: str | None = None) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(rayjob_schema(folder))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(rayjob), key=lambda e: list(e.absolute_path))
    ]


def operator_errors(rayjob: dict[str, Any]) -> list[str]:
    """Rules the KubeRay operator (or the CRD's CEL rules) enforce beyond the plain schema."""
    spec = rayjob.get("spec", {})
    mode = spec.get("submissionMode", "K8sJobMode")
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    errors = []
    name = rayjob.get("metadata", {}).get("name", "")
    if len(name) > MAX_RAYJOB_NAME:
        errors.append(f"metadata.name longer than {MAX_RAYJOB_NAME} characters")
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not shutdown:
        errors.append("ttlSecondsAfterFinished > 0 needs shutdownAfterJobFinishes: true")
    if spec.get("suspend") and not shutdown:
        errors.append("suspend needs shutdownAfterJobFinishes: true")
    if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
        errors.append("activeDeadlineSeconds must be positive")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append("backoffLimit > 0 is not allowed in InteractiveMode")
    if mode == "SidecarMode" and ({"submitterPodTemplate", "submitterConfig"} & set(spec)):
        errors.append("SidecarMode forbids submitterPodTemplate and submitterConfig")
    if not spec.get("entrypoint") and mode != "InteractiveMode":
        errors.append("entrypoint is required")
    if "rayClusterSpec" not in spec and "clusterSelector" not in spec:
        errors.append("one of rayClusterSpec or clusterSelector is required")
    cluster = spec.get("rayClusterSpec", {})
    for group in cluster.get("workerGroupSpecs", []):
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if low > high:
            errors.append(f"worker group {group.get('groupName')}: minReplicas > maxReplicas")
        if "replicas" in group and not low <= group["replicas"] <= high and not cluster.get(
            "enableInTreeAutoscaling"
        ):
            errors.append(f"worker group {group.get('groupName')}: replicas outside bounds")
    return errors


def rayjob_errors(rayjob: dict[str, Any], folder: str | None = None) -> list[str]:
    return schema_errors(rayjob, folder) + operator_errors(rayjob)
