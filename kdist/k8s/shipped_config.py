"""The run config as a RayJob gets it: what the user wrote plus their overrides.

The job validates and completes the config itself when it starts (the demo, for instance, names
its models under the run's output dir, which on the cluster is the outputs PVC), so the
ConfigMap carries the config as written, not a locally completed copy. It is validated here
too, so that `kdist submit` fails before anything is created.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdist.config import RunConfig, apply_override, load_config, read_yaml, redacted


@dataclass
class ShippedConfig:
    raw: dict[str, Any]  # as written, overrides applied: what the ConfigMap holds
    config: RunConfig  # validated: its `cluster` section shapes the RayJob

    def to_yaml(self) -> str:
        return yaml.safe_dump(redacted(self.raw), sort_keys=False)


def load_shipped_config(path: str | Path, overrides: list[str], stage: str) -> ShippedConfig:
    if stage == "demo":  # the demo completes its config itself (kdist.demo)
        from kdist.demo import load_demo_config

        config = load_demo_config(str(path), list(overrides))
    else:
        config = load_config(path, overrides)
    raw = read_yaml(Path(path).read_text())
    for override in overrides:
        apply_override(raw, override)
    return ShippedConfig(raw=raw, config=config)


def shipped(config: RunConfig) -> ShippedConfig:
    """A config built in code, shipped as its full dump."""
    return ShippedConfig(raw=copy.deepcopy(config.model_dump(mode="json")), config=config)
