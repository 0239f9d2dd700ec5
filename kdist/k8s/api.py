"""Connecting to the Kubernetes API and turning its failures into one-line errors.

The official `kubernetes` client raises ApiException with a JSON Status body, or urllib3 errors
when the server cannot be reached; users need one line that says what is wrong and what to do
(log in, get a Role bound, install KubeRay, pick another name).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from kdist.k8s.rayjob import GROUP, PLURAL, VERSION


class KubeError(RuntimeError):
    """A Kubernetes problem in one line (the CLI prints it and exits 1)."""


def connect(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client from the kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) or, inside
    a pod, from its service account."""
    if kubeconfig is None and not _kubeconfig_exists() and _in_cluster():
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError) as err:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise KubeError(
            f"no usable Kubernetes credentials: {where}: {_first_line(err)}"
            " (pass --kubeconfig, set KUBECONFIG, or run inside a pod with a service account)"
        ) from None


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's context (or the pod's own), else `default`."""
    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
            active = next((c for c in contexts if c["name"] == context), active)
        return active.get("context", {}).get("namespace") or "default"
    except (ConfigException, FileNotFoundError, TypeError):
        pod_namespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
        if os.path.exists(pod_namespace):
            with open(pod_namespace) as handle:
                return handle.read().strip() or "default"
        return "default"


def _kubeconfig_exists() -> bool:
    paths = os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)
    return any(os.path.exists(os.path.expanduser(path)) for path in paths if path)


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def rayjob_crd_installed(api: client.ApiClient) -> bool:
    try:
        # Only whether the group/version is served matters, not the listing's contents.
        client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION, _preload_content=False)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


@contextlib.contextmanager
def explained(api: client.ApiClient, action: str, what: str, namespace: str) -> Iterator[None]:
    """Run a request; re-raise its failure as a KubeError that says what to do about it.

    action: the verb ("create", "get", "delete", "watch"); what: e.g. "RayJob demo".
    """
    try:
        yield
    except ApiException as err:
        raise _explain(api, err, action, what, namespace) from None
    except HTTPError as err:
        host = api.configuration.host
        raise KubeError(f"cannot reach the Kubernetes API at {host}: {_first_line(err)}") from None


def _explain(
    api: client.ApiClient, err: ApiException, action: str, what: str, namespace: str
) -> KubeError:
    message = _status_message(err)
    where = f"{what} in namespace {namespace}"
    if err.status == 401:
        return KubeError(
            f"the Kubernetes API at {api.configuration.host} rejected the credentials (401):"
            " log in again or fix the kubeconfig's user"
        )
    if err.status == 403:
        return KubeError(
            f"permission denied to {action} {where}: {message}"
            " (apply k8s/rbac.yaml in that namespace and bind it to you)"
        )
    if err.status == 404 and what.startswith("RayJob") and not _crd_installed_safely(api):
        return KubeError(
            f"the RayJob CRD ({PLURAL}.{GROUP}/{VERSION}) is not installed on this cluster:"
            " install the KubeRay operator first (helm install kuberay-operator"
            " kuberay/kuberay-operator)"
        )
    if err.status == 404:
        return KubeError(f"{where} not found")
    if err.status == 409:
        name = what.split()[-1]
        return KubeError(
            f"{where} already exists: pick another name with --name, or remove the old one"
            f" with `kdist cancel {name} --namespace {namespace}`"
        )
    if err.status == 422:
        return KubeError(f"the API server rejected {where}: {message}")
    return KubeError(f"cannot {action} {where}: HTTP {err.status} {message}")


def _crd_installed_safely(api: client.ApiClient) -> bool:
    try:
        return rayjob_crd_installed(api)
    except (ApiException, HTTPError):
        return True  # cannot tell; report the plain 404


def _status_message(err: ApiException) -> str:
    try:
        body: Any = json.loads(err.body or "")
    except (TypeError, ValueError):
        return err.reason or ""
    return body.get("message") or err.reason or "" if isinstance(body, dict) else str(body)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
