"""ray_jobs/: one thin entrypoint per stage, each the `kdist <stage>` command and nothing else."""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

import pytest

from kdist.k8s.rayjob import STAGES

RAY_JOBS = Path(__file__).resolve().parents[2] / "ray_jobs"


def test_every_stage_the_rayjob_can_run_has_an_entrypoint():
    assert sorted(path.stem for path in RAY_JOBS.glob("*.py")) == sorted(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_entrypoint_is_the_kdist_command(stage, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"ray_jobs/{stage}.py", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(RAY_JOBS / f"{stage}.py"), run_name="__main__")
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: kdist {stage} ")


@pytest.mark.parametrize("stage", STAGES)
def test_entrypoint_holds_no_logic(stage):
    tree = ast.parse((RAY_JOBS / f"{stage}.py").read_text())
    kinds = [type(node).__name__ for node in tree.body]
    assert kinds == ["Expr", "Import", "ImportFrom", "Expr", "ImportFrom", "If"]
    main_block = tree.body[-1]
    assert ast.unparse(main_block.test) == "__name__ == '__main__'"
    assert ast.unparse(main_block.body[0]) == f"sys.exit(main(['{stage}', *sys.argv[1:]]))"
