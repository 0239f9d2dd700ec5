"""Fixtures shared by every test: offline mode and a tiny model built from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.tiny_models import demo_word_llama

# Tests never reach a model hub: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 Llama with a tokenizer trained on the demo task's words."""
    return demo_word_llama(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray on 127.0.0.1 for the tests of one module (stages run on Ray Data).
    Stages entered while it runs reuse it instead of starting their own."""
    from kdist.config import validate_config
    from kdist.runtime import ray_session

    config = validate_config({"teacher": {"model": "t"}, "student": {"model": "s"},
                              "runtime": {"num_cpus": 2, "log_to_driver": False}})
    with ray_session(config):
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        yield


@pytest.fixture(scope="session")
def s3_endpoint():
    """A loopback S3 server for the session, and the environment that points clients at it
    (set for this process, so local Ray workers started later inherit it)."""
    from support import s3

    with s3.s3_server() as url:
        previous = s3.apply(s3.s3_environment(url))
        try:
            yield url
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A fresh bucket per test, as an s3:// URI."""
    import re
    import uuid

    from support import s3

    name = re.sub(r"[^a-z0-9-]", "-", f"t-{uuid.uuid4().hex[:8]}-{request.node.name.lower()}")[:60].strip("-")
    s3.create_bucket(s3_endpoint, name)
    return f"s3://{name}"
