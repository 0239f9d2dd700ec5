"""A loopback S3 server (moto) for tests of object-storage locations.

pyarrow's S3 filesystem and every process started from the test (Ray workers included) reach
it through AWS_ENDPOINT_URL; the bucket is created with boto3, as a user would beforehand.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

S3_ENV = {"AWS_ACCESS_KEY_ID": "kdist-test", "AWS_SECRET_ACCESS_KEY": "kdist-test", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def s3_server() -> Iterator[str]:
    """Yields the endpoint URL; the server is stopped by its PID afterwards."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the loopback S3 server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def create_bucket(endpoint_url: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint_url, **_client_env()).create_bucket(Bucket=name)


def _client_env() -> dict[str, str]:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]}  # fmt: skip


def s3_environment(endpoint_url: str) -> dict[str, str]:
    return {**S3_ENV, "AWS_ENDPOINT_URL": endpoint_url, "AWS_EC2_METADATA_DISABLED": "true"}


def apply(env: dict[str, str]) -> dict[str, str | None]:
    """Set `env` in this process; returns what to restore."""
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    return previous
