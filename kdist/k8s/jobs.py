"""Submit a run as a KubeRay RayJob, follow it, read its status, cancel it.

The RayJob is created first (it is what conflicts, and what fails when KubeRay is missing),
then the ConfigMap with the run config, owned by the RayJob so that Kubernetes deletes it with
the job; pods that start before it exists wait for the mount.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch

from kdist.config import RunConfig
from kdist.k8s.api import KubeError, explained
from kdist.k8s.shipped_config import ShippedConfig
from kdist.k8s.rayjob import (
    GROUP,
    PLURAL,
    VERSION,
    build_configmap,
    build_rayjob,
    configmap_name,
    output_dir,
)

# KubeRay's jobDeploymentStatus values after which nothing more happens to the RayJob.
FINISHED_DEPLOYMENT = {"Complete", "Failed", "ValidationFailed"}
# Ray's job status values that end a job.
FINISHED_JOB = {"SUCCEEDED", "FAILED", "STOPPED"}
# One watch request at most this long; the API server ends longer ones anyway.
WATCH_CHUNK_SECONDS = 60


@dataclass
class Outcome:
    """How following a RayJob ended."""

    finished: bool
    succeeded: bool
    status: dict[str, Any]
    deleted: bool = False


def submit(api: client.ApiClient, run: ShippedConfig, name: str, stage: str) -> dict[str, Any]:
    """Create the RayJob and its ConfigMap; return the RayJob as the API server stored it."""
    config = run.config
    namespace = config.cluster.namespace
    rayjob = build_rayjob(config, name, stage)
    with explained(api, "create", f"RayJob {name}", namespace):
        created = client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, rayjob
        )
    configmap = build_configmap(run, name)
    configmap["metadata"]["ownerReferences"] = [
        {
            "apiVersion": created["apiVersion"],
            "kind": "RayJob",
            "name": name,
            "uid": created["metadata"]["uid"],
        }
    ]
    try:
        with explained(api, "create", f"ConfigMap {configmap_name(name)}", namespace):
            client.CoreV1Api(api).create_namespaced_config_map(namespace, configmap)
    except KubeError:
        # Without its config the job cannot start: take the RayJob back.
        _delete_quietly(api, name, namespace)
        raise
    return created


def get(api: client.ApiClient, name: str, namespace: str) -> dict[str, Any]:
    with explained(api, "get", f"RayJob {name}", namespace):
        return client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )


def cancel(api: client.ApiClient, name: str, namespace: str) -> None:
    """Delete the RayJob; KubeRay stops the job and deletes its Ray cluster, Kubernetes the
    ConfigMap it owns."""
    with explained(api, "delete", f"RayJob {name}", namespace):
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
        )


def _delete_quietly(api: client.ApiClient, name: str, namespace: str) -> None:
    try:
        cancel(api, name, namespace)
    except KubeError:
        pass


def follow(
    api: client.ApiClient,
    name: str,
    namespace: str,
    since: str | None,
    timeout: float | None,
    on_change: Callable[[str], None],
) -> Outcome:
    """Watch the RayJob until it finishes, is deleted, or `timeout` seconds pass."""
    deadline = None if timeout is None else time.monotonic() + timeout
    custom = client.CustomObjectsApi(api)
    last_line, status = None, {}
    while deadline is None or time.monotonic() < deadline:
        left = WATCH_CHUNK_SECONDS if deadline is None else deadline - time.monotonic()
        chunk = max(1, int(min(left, WATCH_CHUNK_SECONDS)))
        watcher = watch.Watch()
        with explained(api, "watch", f"RayJob {name}", namespace):
            events = watcher.stream(
                custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                timeout_seconds=chunk,
                _request_timeout=chunk + 10,
                **({"resource_version": since} if since else {}),
            )
            for event in events:
                obj = event["object"]
                since = obj["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    on_change("deleted")
                    return Outcome(finished=True, succeeded=False, status=status, deleted=True)
                status = obj.get("status") or {}
                line = describe(status)
                if line != last_line:
                    on_change(line)
                    last_line = line
                if is_finished(status):
                    watcher.stop()
                    return Outcome(True, status.get("jobStatus") == "SUCCEEDED", status)
    return Outcome(finished=False, succeeded=False, status=status)


def is_finished(status: dict[str, Any]) -> bool:
    return status.get("jobDeploymentStatus") in FINISHED_DEPLOYMENT


def describe(status: dict[str, Any]) -> str:
    line = f"{status.get('jobDeploymentStatus') or 'New'}"
    if status.get("jobStatus"):
        line += f", job {status['jobStatus']}"
    if status.get("reason"):
        line += f" ({status['reason']})"
    if status.get("message"):
        line += f": {status['message']}"
    return line


def where_outputs_land(config: RunConfig, name: str) -> str:
    cluster = config.cluster
    path = output_dir(cluster, name, config)
    if cluster.outputs_pvc:
        return f"{path} on PVC {cluster.outputs_pvc} (namespace {cluster.namespace})"
    return f"{path} inside the Ray pods (no outputs PVC: use object storage for run.output_dir)"
