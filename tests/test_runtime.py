"""The local Ray a run starts: its own (two runs side by side each talk to theirs), and its
temp dir removed after the run, failed or not, unless --keep-ray-logs.

Not in a module with the module-scoped `local_ray` fixture: a Ray already running in this
process would be reused, and nothing here would start."""

import logging
import tempfile

import pytest

from kdist.config import validate_config

BASE = {"teacher": {"model": "t"}, "student": {"model": "s"}}


SECOND_RUN = """
import sys
from kdist.config import validate_config
from kdist.runtime import ray_session
config = validate_config({"teacher": {"model": "t"}, "student": {"model": "s"}, "runtime": {"num_cpus": 1}})
with ray_session(config):
    print("up", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def short_temp_root(monkeypatch):
    # Short: Ray's socket paths under its temp dir must stay within the 107 bytes of AF_UNIX.
    import shutil

    import ray

    assert not ray.is_initialized(), "a Ray of another test is still up: these tests would start none"
    root = tempfile.mkdtemp(prefix="kdist-t-", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_two_local_runs_each_use_their_own_ray_and_a_failed_one_leaves_no_temp_dir(short_temp_root):
    import os
    import subprocess
    import sys

    import ray

    from kdist.runtime import ray_session

    other_tmp = tempfile.mkdtemp(prefix="kdist-o-", dir="/tmp")
    other = subprocess.Popen([sys.executable, "-c", SECOND_RUN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "TMPDIR": other_tmp})  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "up"
        config = validate_config({**BASE, "runtime": {"num_cpus": 1, "log_to_driver": False}})

        @ray.remote(num_cpus=0)
        def nodes_seen_by_the_state_api() -> list[str]:
            # What Ray Train's placement-group cleaner does inside the cluster: the state API
            # without an address.
            from ray.util.state import list_nodes

            return [node.node_id for node in list_nodes()]

        with pytest.raises(RuntimeError, match="the run failed"), ray_session(config):
            assert ray.get(nodes_seen_by_the_state_api.remote()) == [ray.get_runtime_context().get_node_id()]
            raise RuntimeError("the run failed")
        assert os.listdir(short_temp_root) == [], "the failed run left its Ray temp dir"
    finally:
        other.stdin.close()
        other.wait(timeout=60)
        import shutil

        shutil.rmtree(other_tmp, ignore_errors=True)


def test_keep_ray_logs_keeps_the_temp_dir_and_says_where(short_temp_root, caplog):
    import os

    from kdist.runtime import ray_session

    config = validate_config({**BASE, "runtime": {"num_cpus": 1, "log_to_driver": False, "keep_ray_logs": True}})
    with caplog.at_level(logging.WARNING), ray_session(config):
        pass
    [kept] = os.listdir(short_temp_root)
    assert f"the local Ray's logs are kept in {short_temp_root}/{kept}" in caplog.text
