"""ray_jobs/job.py: the one Ray job entrypoint, the `kdist <command>` CLI and nothing else."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from kdist.stages import JOB_COMMANDS, STAGE_NAMES

JOB = Path(__file__).resolve().parents[2] / "ray_jobs" / "job.py"


def _run(argv: list[str]) -> int:
    sys.argv = ["ray_jobs/job.py", *argv]
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(JOB), run_name="__main__")
    return exited.value.code


def test_job_commands_are_the_registry_stages_plus_run_and_demo():
    assert JOB_COMMANDS == ("run", *STAGE_NAMES, "demo")
    assert [path.name for path in JOB.parent.glob("*.py")] == ["job.py"]


@pytest.mark.parametrize("command", JOB_COMMANDS)
def test_each_command_is_the_kdist_command(command, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", sys.argv)
    assert _run([command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: kdist {command} ")


@pytest.mark.parametrize("argv", [[], ["pretrain", "--config", "x.yaml"]])
def test_an_unknown_command_is_a_usage_error(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", sys.argv)
    assert _run(argv) == 2
    assert "usage: ray_jobs/job.py {run,prepare,generate," in capsys.readouterr().err
