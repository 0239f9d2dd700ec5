"""Helm values for helm/kdist that render the same RayJob as `build_rayjob` for a config.

Users of the chart write values by hand; this mapping exists so that the chart and
`kdist submit` cannot drift apart: the tests render the chart with these values and compare its
RayJob with the builder's, and `kdist submit --print-values` shows a config as chart values.
"""

from __future__ import annotations

from typing import Any

from kdist.config import PodGroupSection
from kdist.k8s.rayjob import RAY_VERSION, SUBMITTER_RESOURCES
from kdist.k8s.shipped_config import ShippedConfig


def chart_values(run: ShippedConfig, stage: str = "run") -> dict[str, Any]:
    config = run.config
    cluster = config.cluster
    repository, tag = split_image(cluster.image)
    workers = cluster.workers
    return {
        "stage": stage,
        "image": {"repository": repository, "tag": tag, "pullPolicy": cluster.image_pull_policy},
        "imagePullSecrets": [{"name": secret} for secret in cluster.image_pull_secrets],
        "rayVersion": RAY_VERSION,
        # The config names an existing account; the chart creates none then.
        "serviceAccount": {"create": False, "name": cluster.service_account},
        "head": group_values(cluster.head),
        "worker": {
            **group_values(workers),
            "replicas": workers.replicas,
            "minReplicas": workers.min_replicas,
            "maxReplicas": workers.max_replicas,
        },
        "submitter": {"resources": SUBMITTER_RESOURCES},
        "autoscaling": {"enabled": cluster.autoscaling, "idleTimeoutSeconds": 60},
        "job": {
            "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
            "activeDeadlineSeconds": cluster.active_deadline_seconds,
            "backoffLimit": cluster.backoff_limit,
        },
        "persistence": {
            "cache": pvc_values(cluster.cache_pvc),
            "outputs": pvc_values(cluster.outputs_pvc),
        },
        "secrets": {
            "existingSecret": "",
            "create": False,
            "env": [
                {"name": ref.env, "key": ref.key, "secretName": ref.secret_name}
                for ref in cluster.secret_env
            ],
        },
        "config": run.raw,
    }


def split_image(image: str) -> tuple[str, str]:
    """`registry:5000/repo:tag` -> (`registry:5000/repo`, `tag`); no tag means `latest`."""
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


def group_values(group: PodGroupSection) -> dict[str, Any]:
    return {
        "resources": group.resources.model_dump(),
        "nodeSelector": dict(group.node_selector),
        "tolerations": [t.model_dump(exclude_none=True) for t in group.tolerations],
        "affinity": group.affinity or {},
    }


def pvc_values(claim: str | None) -> dict[str, Any]:
    return {"enabled": bool(claim), "existingClaim": claim or ""}


def with_registry_stages(schema_text: str) -> str:
    """The chart's values.schema.json with its `stage` enum set from the stage registry ("":
    the chart picks demo or run). `make chart-stages` writes it; a test checks it is current."""
    import json

    from kdist.stages import JOB_COMMANDS

    schema = json.loads(schema_text)
    schema["properties"]["stage"]["enum"] = ["", *JOB_COMMANDS]
    return json.dumps(schema, indent=2) + "\n"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    path = Path(sys.argv[1])
    path.write_text(with_registry_stages(path.read_text()))
