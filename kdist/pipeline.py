"""Runs stages in order over one run directory, with stage-level resume.

Each stage reads the outputs of the stages it names as inputs (kdist.stages) and writes its
own directory. A finished stage leaves a marker with a fingerprint of its settings (a template
file by its text) and of the files it reads from outside the run (sizes and modification
times), chained through the fingerprints of its inputs, so `--resume` skips exactly the
stages whose inputs and settings are unchanged and redoes everything downstream of a change.
A skipped stage's Parquet files are checked (footers) first: a truncated or corrupt one means
the stage runs again.

Everything that can be checked without Ray is, before Ray starts (kdist.preflight).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from kdist import preflight, storage, templating
from kdist.config import RunConfig, config_to_yaml
from kdist.runtime import output_dir, ray_session
from kdist.stages import BY_NAME, STAGE_NAMES, STAGES, StageContext

log = logging.getLogger(__name__)


def stage_dirs(config: RunConfig) -> dict[str, str]:
    context = StageContext(config, output_dir(config))
    return {name: context.dir(name) for name in STAGE_NAMES}


def stage_fingerprints(config: RunConfig) -> dict[str, str]:
    """What each stage's output depends on: its settings, the files it reads from outside the
    run, and its inputs' fingerprints."""
    fingerprints: dict[str, str] = {}
    for stage in STAGES:
        settings = templating.by_content(
            [part.model_dump(mode="json") if hasattr(part, "model_dump") else part for part in stage.settings(config)]
        )
        sources = {field: storage.files_fingerprint(location) for field, location in stage.sources(config).items()}
        upstream = [fingerprints[name] for name in stage.inputs]
        fingerprints[stage.name] = storage.fingerprint(stage.name, settings, sources, upstream)
    return fingerprints


def run_stages(config: RunConfig, stages: Sequence[str], resume: bool = False) -> int:
    root = output_dir(config)
    context = StageContext(config, root, resume)
    preflight.check_run(context, stages)
    fingerprints = stage_fingerprints(config)
    timings: dict[str, float] = {}
    with ray_session(config, use_gpu=config.train.use_gpu):
        for name in stages:
            directory = context.dir(name)
            if resume and _still_done(name, directory, fingerprints[name]):
                log.info("stage %s: done earlier with the same settings and inputs, skipped (--resume)", name)
                continue
            if not BY_NAME[name].atomic:
                storage.clear_done(directory)  # its output changes in place from here on
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


def _still_done(name: str, directory: str, fingerprint: str) -> bool:
    if not storage.is_done(directory, fingerprint):
        return False
    unreadable = storage.unreadable_parquet(directory)
    for path in unreadable:
        log.warning("stage %s: %s is truncated or corrupt; the stage runs again", name, path)
    return not unreadable


def _record_timings(root: str, timings: dict[str, float]) -> None:
    path = storage.join(root, "stage_seconds.json")
    previous: dict[str, Any] = storage.read_json(path) if storage.exists(path) else {}
    storage.write_json(path, {**previous, **timings})
