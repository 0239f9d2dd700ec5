"""The test helpers themselves: missing KubeRay CRDs fail loudly, and the loopback API's pod
routes behave as the API server's do (through the official client)."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client, config as kube_config
from kubernetes.client.rest import ApiException

from support import kuberay_schema
from support.fake_kube import FakeKube

NAMESPACE = "ml-team"


def test_missing_crds_fail_with_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("KDIST_KUBERAY_CRDS", str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as raised:
        kuberay_schema.require_crd_dir()
    message = str(raised.value)
    assert f"put {kuberay_schema.RAYJOB_CRD}" in message and str(tmp_path) in message
    assert "KDIST_KUBERAY_CRDS" in message
    # The fake API server refuses to start rather than accept RayJobs unchecked.
    with pytest.raises(pytest.fail.Exception):
        FakeKube().start()
    with pytest.raises(FileNotFoundError, match="KubeRay CRDs not found"):
        FakeKube(crd_folder=tmp_path).start()


@pytest.fixture
def core(tmp_path):
    with FakeKube() as kube:
        api = kube_config.new_client_from_config(str(kube.write_kubeconfig(tmp_path / "kc")))
        yield kube, client.CoreV1Api(api)
        api.close()


def test_pod_list_by_label_and_plain_log_with_tail(core):
    kube, api = core
    kube.add_pod(NAMESPACE, "job-a-1", {"job-name": "job-a"}, "one\ntwo\nthree\n")
    kube.add_pod(NAMESPACE, "other", {"job-name": "job-b"}, "x\n")
    pods = api.list_namespaced_pod(NAMESPACE, label_selector="job-name=job-a").items
    assert [(p.metadata.name, p.status.phase) for p in pods] == [("job-a-1", "Running")]
    assert api.read_namespaced_pod_log("job-a-1", NAMESPACE) == "one\ntwo\nthree\n"
    assert api.read_namespaced_pod_log("job-a-1", NAMESPACE, tail_lines=2) == "two\nthree\n"


def test_a_pending_pod_has_no_log_yet_and_a_missing_one_is_404(core):
    kube, api = core
    kube.add_pod(NAMESPACE, "waiting", {}, phase="Pending")
    with pytest.raises(ApiException) as raised:
        api.read_namespaced_pod_log("waiting", NAMESPACE)
    assert raised.value.status == 400 and "waiting to start" in raised.value.body
    with pytest.raises(ApiException) as raised:
        api.read_namespaced_pod_log("nobody", NAMESPACE)
    assert raised.value.status == 404


def test_follow_streams_appended_lines_until_the_pod_terminates(core):
    kube, api = core
    kube.add_pod(NAMESPACE, "driver", {}, "start\n")

    def kubelet() -> None:
        for line in ("step 1\n", "step 2\n"):
            time.sleep(0.2)
            kube.append_log(NAMESPACE, "driver", line)
        time.sleep(0.2)
        kube.set_pod_phase(NAMESPACE, "driver", "Succeeded")

    threading.Thread(target=kubelet, daemon=True).start()
    started = time.monotonic()
    response = api.read_namespaced_pod_log(
        "driver", NAMESPACE, follow=True, _preload_content=False
    )
    arrivals = []
    for chunk in response.stream(1024):
        arrivals.append((round(time.monotonic() - started, 1), chunk.decode()))
    assert "".join(text for _, text in arrivals) == "start\nstep 1\nstep 2\n"
    # Streamed as they were written, not at the end.
    assert arrivals[0][0] < 0.15 and len(arrivals) == 3
    assert 0.5 < time.monotonic() - started < 5
