"""Runs stages in order over one run directory, with stage-level resume.

Each stage reads the outputs of the stages before it from disk and writes its own directory.
A finished stage leaves a marker with a fingerprint of the config it depends on (chained
through its inputs), so `--resume` skips exactly the stages whose inputs and settings are
unchanged and redoes everything downstream of a change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kdist import io
from kdist.config import RunConfig, config_to_yaml
from kdist.runtime import output_dir, ray_session, resolve_model

log = logging.getLogger(__name__)

STAGES = ["prepare", "generate", "judge", "filter", "train", "evaluate"]


def stage_paths(config: RunConfig) -> dict[str, Path]:
    root = output_dir(config)
    return {stage: root / name for stage, name in {
        "prepare": "prompts", "generate": "responses", "judge": "judgements",
        "filter": "sft", "train": "student", "evaluate": "eval"}.items()}


def stage_fingerprints(config: RunConfig) -> dict[str, str]:
    """What each stage's output depends on, chained so a change invalidates what follows."""
    relevant: dict[str, Any] = {
        "prepare": [config.data, config.run.seed],
        "generate": [config.teacher],
        "judge": [config.judge],
        "filter": [config.judge.min_score],
        "train": [config.student, config.train, config.run.seed],
        "evaluate": [config.evaluate, config.student.model],
    }
    fingerprints: dict[str, str] = {}
    upstream = ""
    for stage in STAGES:
        dumped = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in relevant[stage]]
        upstream = fingerprints[stage] = io.fingerprint(stage, dumped, upstream)
    return fingerprints


def run_stages(config: RunConfig, stages: Sequence[str], resume: bool = False) -> int:
    root = output_dir(config)
    root.mkdir(parents=True, exist_ok=True)
    io.write_text(root / "config.yaml", config_to_yaml(config))
    paths, fingerprints = stage_paths(config), stage_fingerprints(config)
    timings: dict[str, float] = {}
    with ray_session(config, use_gpu=config.train.use_gpu):
        for stage in stages:
            if resume and io.is_done(paths[stage], fingerprints[stage]):
                log.info("stage %s: done earlier with the same settings, skipped (--resume)", stage)
                continue
            io.clear_done(paths[stage])
            started = time.monotonic()
            log.info("stage %s: starting", stage)
            # Only training resumes inside a stage (from its checkpoints); others redo the stage.
            summary = (_train(config, paths, resume=resume) if stage == "train"
                       else RUNNERS[stage](config, paths))
            timings[stage] = round(time.monotonic() - started, 1)
            io.mark_done(paths[stage], fingerprints[stage], summary)
            log.info("stage %s: finished in %.1fs %s", stage, timings[stage], summary)
    _record_timings(root, timings)
    return 0


def _record_timings(root: Path, timings: dict[str, float]) -> None:
    import json

    path = root / "stage_seconds.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    io.write_json(path, {**previous, **timings})


def _prepare(config: RunConfig, paths: dict[str, Path]) -> dict[str, Any]:
    from kdist.data.prepare import run_prepare

    return run_prepare(config, paths["prepare"])


def _generate(config: RunConfig, paths: dict[str, Path]) -> dict[str, Any]:
    from kdist.data.prepare import PROMPTS_FILE
    from kdist.generate import run_generate

    return run_generate(config, paths["prepare"] / PROMPTS_FILE, paths["generate"])


def _judge(config: RunConfig, paths: dict[str, Path]) -> dict[str, Any]:
    from kdist.generate import RESPONSES_FILE
    from kdist.judge import run_judge

    return run_judge(config, paths["generate"] / RESPONSES_FILE, paths["judge"])


def _filter(config: RunConfig, paths: dict[str, Path]) -> dict[str, Any]:
    from kdist.data.prepare import PROMPTS_FILE
    from kdist.filter import run_filter
    from kdist.generate import RESPONSES_FILE
    from kdist.judge import JUDGEMENTS_FILE

    return run_filter(config, paths["prepare"] / PROMPTS_FILE, paths["generate"] / RESPONSES_FILE,
                      paths["judge"] / JUDGEMENTS_FILE, paths["filter"])


def _train(config: RunConfig, paths: dict[str, Path], resume: bool = False) -> dict[str, Any]:
    from kdist.data.prepare import PROMPTS_FILE
    from kdist.train.loop import TrainSpec
    from kdist.train.trainer import run_training

    spec = TrainSpec(
        model_dir=resolve_model(config.student.model),
        train_path=str(paths["filter"] / "train.parquet"),
        eval_path=str(paths["filter"] / "validation.parquet"),
        out_dir=str(paths["train"]),
        train=config.train.model_dump(mode="json"),
        seed=config.run.seed,
        label="student",
        teacher_model_dir=resolve_model(config.teacher.model),
        prompts_path=str(paths["prepare"] / PROMPTS_FILE),
        resume=resume,
    )
    return run_training(spec)


def _evaluate(config: RunConfig, paths: dict[str, Path]) -> dict[str, Any]:
    from kdist.data.prepare import PROMPTS_FILE
    from kdist.evaluate import run_evaluate
    from kdist.generate import RESPONSES_FILE

    return run_evaluate(config, paths["prepare"] / PROMPTS_FILE, paths["generate"] / RESPONSES_FILE,
                        paths["train"], paths["evaluate"])


RUNNERS: dict[str, Callable[[RunConfig, dict[str, Path]], dict[str, Any]]] = {
    "prepare": _prepare,
    "generate": _generate,
    "judge": _judge,
    "filter": _filter,
    "train": _train,
    "evaluate": _evaluate,
}
