import subprocess
from pathlib import Path
import sys

import pytest
import yaml

from kdist.cli import build_parser, main

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_kdist(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdist.cli", *args], capture_output=True, text=True)


def test_validate_typo_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"model": "t", "modle": "x"}, "student": {"model": "s"}}))
    result = run_kdist("validate", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "teacher.modle" in lines[0]


def test_validate_ok(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"model": "t"}, "student": {"model": "s"}}))
    assert main(["validate", "--config", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(PROJECT_ROOT.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path, capsys):
    assert main(["validate", "--config", str(path)]) == 0


def test_demo_config_in_repo_is_valid():
    from kdist.demo import load_demo_config

    config = load_demo_config("configs/demo.yaml", [])
    assert config.student.build.hidden_size < config.demo.teacher_build.hidden_size or (
        config.student.build.num_layers < config.demo.teacher_build.num_layers
    )


@pytest.mark.parametrize(
    "command", ["run", "prepare", "generate", "judge", "filter", "train", "evaluate", "demo", "validate"]
)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_usage_errors_exit_2():
    assert run_kdist("no-such-command").returncode == 2
    assert run_kdist("prepare").returncode == 2  # --config is required
    assert run_kdist("validate", "--config", "/does/not/exist.yaml").returncode == 2
