"""The driver log of a RayJob: print it, or follow it until the job ends.

In K8sJobMode KubeRay runs `ray job submit` and then `ray job logs --follow` in a submitter pod
(a Kubernetes Job named after the RayJob), so that pod's log is the driver's output. The Job
controller labels its pods `job-name=<RayJob name>`; a retried submitter is a newer pod.
Following polls the RayJob and that pod (the submitter Role may get and list, not watch pods)
and streams the pod's log while it runs.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from kdist.k8s import jobs
from kdist.k8s.api import KubeError, explained
from kdist.k8s.rayjob import GROUP, PLURAL, VERSION

# How often the RayJob and its submitter pod are looked at while nothing streams.
POLL_SECONDS = 1.0
# After the job ends, how long its submitter may take to print its last lines and exit.
FINISH_GRACE_SECONDS = 30.0
CONNECT_SECONDS = 10.0
TERMINATED = {"Succeeded", "Failed"}

Write = Callable[[str], None]


def submitter_pod(api: client.ApiClient, name: str, namespace: str) -> Any | None:
    """The newest pod of the RayJob's submitter Job, or None before KubeRay starts one."""
    with explained(api, "list", f"pods of RayJob {name}", namespace):
        pods = client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=f"job-name={name}"
        ).items
    return max(pods, key=_created, default=None)


def _created(pod: Any) -> tuple[float, str]:
    created = pod.metadata.creation_timestamp
    return (created.timestamp() if created else 0.0, pod.metadata.name)


def read(api: client.ApiClient, name: str, namespace: str) -> str:
    """The driver log so far; a one-line KubeError when the job or its log is not there."""
    jobs.get(api, name, namespace)  # a missing RayJob is reported as such
    pod = submitter_pod(api, name, namespace)
    wait = f"wait for it with `kdist logs {name} -n {namespace} --follow`"
    if pod is None:
        raise KubeError(
            f"RayJob {name} in namespace {namespace} has no submitter pod yet (KubeRay starts"
            f" it once the Ray cluster is up): {wait}"
        )
    if _phase(pod) == "Pending":
        raise KubeError(
            f"the submitter pod {pod.metadata.name} of RayJob {name} is not running yet"
            f" (Pending): {wait}"
        )
    return _pod_log(api, pod.metadata.name, namespace)


def tail(api: client.ApiClient, name: str, namespace: str, lines: int = 40) -> str:
    """The last lines of the driver log, or "" when the job never got a submitter pod."""
    pod = submitter_pod(api, name, namespace)
    if pod is None or _phase(pod) == "Pending":
        return ""
    return _pod_log(api, pod.metadata.name, namespace, lines)


def _pod_log(api: client.ApiClient, pod_name: str, namespace: str, lines: int | None = None):
    kwargs = {} if lines is None else {"tail_lines": lines}
    with explained(api, "get", f"the log of pod {pod_name}", namespace):
        return client.CoreV1Api(api).read_namespaced_pod_log(pod_name, namespace, **kwargs)


def follow(
    api: client.ApiClient,
    name: str,
    namespace: str,
    write: Write,
    on_status: Write,
    timeout: float | None = None,
) -> jobs.Outcome:
    """Write the driver log line by line until the job ends (or is deleted, or `timeout`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    jobs.get(api, name, namespace)  # a missing RayJob is an error, a vanishing one an outcome
    reader = _PodLogReader(api, namespace, write)
    last_line, finished_at = None, None
    while True:
        status = _status_or_none(api, name, namespace)
        if status is None:
            on_status("deleted")
            return jobs.Outcome(finished=True, succeeded=False, status={}, deleted=True)
        line = jobs.describe(status)
        if line != last_line:
            on_status(line)
            last_line = line
        if jobs.is_finished(status) and finished_at is None:
            finished_at = time.monotonic()
        pod = submitter_pod(api, name, namespace)
        if pod is not None:
            reader.read(pod, _read_deadline(deadline, finished_at))
        if finished_at is not None and (pod is None or reader.finished(pod, finished_at)):
            return jobs.Outcome(True, status.get("jobStatus") == "SUCCEEDED", status)
        if deadline is not None and time.monotonic() >= deadline:
            return jobs.Outcome(finished=False, succeeded=False, status=status)
        time.sleep(_until(deadline, POLL_SECONDS))


def _status_or_none(api: client.ApiClient, name: str, namespace: str) -> dict | None:
    with explained(api, "get", f"RayJob {name}", namespace):
        try:
            rayjob = client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as err:
            if err.status == 404:  # deleted while we followed (kdist cancel, its TTL)
                return None
            raise
    return rayjob.get("status") or {}


def _read_deadline(deadline: float | None, finished_at: float | None) -> float | None:
    """A finished job's submitter gets a grace period to exit; else the caller's deadline."""
    if finished_at is None:
        return deadline
    grace = finished_at + FINISH_GRACE_SECONDS
    return grace if deadline is None else min(deadline, grace)


def _until(deadline: float | None, most: float) -> float:
    if deadline is None:
        return most
    return max(0.0, min(most, deadline - time.monotonic()))


def _phase(pod: Any) -> str:
    return (pod.status.phase if pod.status else None) or "Pending"


class _PodLogReader:
    """Streams pods' logs, each line once: a stream cut while the pod runs is read again from
    the start and the lines already written are skipped (the log only grows)."""

    def __init__(self, api: client.ApiClient, namespace: str, write: Write):
        self.api, self.namespace, self.write = api, namespace, write
        self.written: dict[str, int] = {}
        self.done: set[str] = set()  # read to the end after the pod terminated

    def finished(self, pod: Any, finished_at: float) -> bool:
        """Nothing more to read from this pod (or it had its grace period)."""
        over = time.monotonic() >= finished_at + FINISH_GRACE_SECONDS
        return pod.metadata.name in self.done or _phase(pod) == "Pending" or over

    def read(self, pod: Any, deadline: float | None) -> None:
        """Write what is new in the pod's log: streamed while it runs, until it exits, the
        connection is cut, or the deadline passes."""
        pod_name, phase = pod.metadata.name, _phase(pod)
        if pod_name in self.done or phase not in TERMINATED | {"Running"}:
            return
        if deadline is not None and time.monotonic() >= deadline:
            return
        # A follow without a deadline may stay silent for hours (a long training step).
        timeout = {} if deadline is None else {
            "_request_timeout": (CONNECT_SECONDS, max(0.01, deadline - time.monotonic()))
        }
        with explained(self.api, "get", f"the log of pod {pod_name}", self.namespace):
            try:
                response = client.CoreV1Api(self.api).read_namespaced_pod_log(
                    pod_name,
                    self.namespace,
                    follow=phase == "Running",
                    _preload_content=False,
                    **timeout,
                )
            except ApiException as err:
                if err.status == 400:  # its container is not started yet: the next poll
                    return
                raise
        ended = self._copy(pod_name, response, phase in TERMINATED, deadline)
        if ended and phase in TERMINATED:
            self.done.add(pod_name)

    def _copy(self, pod_name: str, response: Any, complete: bool, deadline: float | None) -> bool:
        """Write the lines not written yet; True when the stream reached its end."""
        seen, skip = 0, self.written.get(pod_name, 0)
        try:
            for line, whole in _lines(response):
                if not whole and not complete:
                    return False  # cut mid-line: the whole line comes with the next read
                seen += 1
                if seen > skip:
                    self.write(line)
                    self.written[pod_name] = seen
                if deadline is not None and time.monotonic() >= deadline:
                    return False
            return True
        except HTTPError:  # the read timed out (at the deadline) or the connection was cut
            return False
        finally:
            response.release_conn()


def _lines(response: Any) -> Iterator[tuple[str, bool]]:
    """(line without its newline, whether it was whole) as the bytes arrive."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in response.stream(4096):
        pending += decoder.decode(chunk)
        *whole, pending = pending.split("\n")
        for line in whole:
            yield line, True
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending, False
