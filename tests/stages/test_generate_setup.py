"""Setup problems of the generate stage fail in one line before any work starts."""

from __future__ import annotations

import pytest

from kdist.config import RunConfig
from kdist.errors import UsageError
from kdist.stages import BY_NAME, StageContext


def _config(**teacher) -> RunConfig:
    return RunConfig(teacher={"kind": "openai", "model": "m", "endpoint": "http://127.0.0.1:9/v1", **teacher}, student={"model": "x"})


def test_named_but_unset_key_variable_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KDIST_UNSET_KEY", raising=False)
    with pytest.raises(UsageError, match="teacher.api_key_env names KDIST_UNSET_KEY"):
        BY_NAME["generate"].run(StageContext(_config(api_key_env="KDIST_UNSET_KEY"), str(tmp_path)))
