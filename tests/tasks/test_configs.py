"""A config per task under configs/tasks/ that validates, for the task its name says, and whose
teacher splits are splits the data will have."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdist.config import load_config
from kdist.tasks import TASKS

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tasks"


def test_every_task_has_a_config():
    assert {path.stem for path in CONFIGS.glob("*.yaml")} >= set(TASKS)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_task_config_validates(path):
    raw = yaml.safe_load(path.read_text())
    config = load_config(path)
    if path.stem in TASKS:
        assert config.data.task.kind == path.stem
    if config.data.splits:
        assert set(config.teacher.splits) <= set(config.data.splits), "a teacher split the data will not have"
        assert config.evaluate.split in config.data.splits
    assert raw["data"]
