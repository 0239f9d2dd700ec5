"""Runs stages in order over one run directory, with stage-level resume.

Each stage reads the outputs of the stages it names as inputs (kdist.stages) and writes its
own directory. A finished stage leaves a marker with a fingerprint of its settings, chained
through the fingerprints of its inputs, so `--resume` skips exactly the stages whose inputs
and settings are unchanged and redoes everything downstream of a change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from kdist import storage
from kdist.config import RunConfig, config_to_yaml
from kdist.runtime import output_dir, ray_session
from kdist.stages import BY_NAME, STAGE_NAMES, STAGES, StageContext

log = logging.getLogger(__name__)


def stage_dirs(config: RunConfig) -> dict[str, str]:
    context = StageContext(config, output_dir(config))
    return {name: context.dir(name) for name in STAGE_NAMES}


def stage_fingerprints(config: RunConfig) -> dict[str, str]:
    """What each stage's output depends on: its settings and its inputs' fingerprints."""
    fingerprints: dict[str, str] = {}
    for stage in STAGES:
        settings = [part.model_dump(mode="json") if hasattr(part, "model_dump") else part for part in stage.settings(config)]
        upstream = [fingerprints[name] for name in stage.inputs]
        fingerprints[stage.name] = storage.fingerprint(stage.name, settings, upstream)
    return fingerprints


def run_stages(config: RunConfig, stages: Sequence[str], resume: bool = False) -> int:
    root = output_dir(config)
    context = StageContext(config, root, resume)
    fingerprints = stage_fingerprints(config)
    timings: dict[str, float] = {}
    with ray_session(config, use_gpu=config.train.use_gpu):
        for name in stages:
            directory = context.dir(name)
            if resume and storage.is_done(directory, fingerprints[name]):
                log.info("stage %s: done earlier with the same settings, skipped (--resume)", name)
                continue
            storage.clear_done(directory)
            started = time.monotonic()
            log.info("stage %s: starting", name)
            summary = BY_NAME[name].run(context)
            timings[name] = round(time.monotonic() - started, 1)
            storage.mark_done(directory, fingerprints[name], summary)
            # The config is saved once a stage has succeeded with it: a failing run never
            # overwrites the config that produced the outputs already there.
            storage.write_text(storage.join(root, "config.yaml"), config_to_yaml(config))
            log.info("stage %s: finished in %.1fs %s", name, timings[name], summary)
    _record_timings(root, timings)
    return 0


def _record_timings(root: str, timings: dict[str, float]) -> None:
    path = storage.join(root, "stage_seconds.json")
    previous: dict[str, Any] = storage.read_json(path) if storage.exists(path) else {}
    storage.write_json(path, {**previous, **timings})
