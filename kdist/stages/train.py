"""The train stage: the student learns from the filtered answers -> student/.

Ray Train + DeepSpeed (kdist.train), or with `train.backend: hosted` a fine-tuning service
(kdist.train.hosted), whose model name goes to train/hosted_model.json for evaluate. Training resumes inside the stage from its checkpoints
under `--resume`. Model files need a local directory: with an object-storage `output_dir` the
stage trains into a local work directory and uploads `student/` when training is done.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kdist import storage
from kdist.llm.models import local_model
from kdist.errors import UsageError
from kdist.stages import StageContext
from kdist.tasks import task_for

WORK_DIR = Path(tempfile.gettempdir()) / "kdist-train"


def run(context: StageContext) -> dict[str, Any]:
    config = context.config
    out = context.dir("train")
    if config.train.backend == "hosted":
        from kdist.train.hosted import fine_tune

        return fine_tune(config.train.hosted, context.dir("filter"), out, config.run.seed)
    from kdist.train.loop import TrainSpec
    from kdist.train.trainer import run_training

    local_out = Path(out) if storage.is_local(out) else WORK_DIR / config.run.name / "student"
    sft = context.dir("filter")
    spec = TrainSpec(
        model_dir=local_model(config.student.model),
        train_path=storage.join(sft, "train"),
        eval_path=storage.join(sft, "validation"),
        out_dir=str(storage.filesystem_for(str(local_out))[1]),
        train=config.train.model_dump(mode="json"),
        seed=config.run.seed,
        label="student",
        teacher_model_dir=local_model(config.teacher.model),
        prompts_path=context.dir("prepare"),
        resume=context.resume,
        chat_template=config.student.chat_template,
        fast_validation=_fast_validation(config),
    )
    result = run_training(spec)
    if not storage.is_local(out):
        storage.upload_dir(local_out, out)
    return result


def _fast_validation(config) -> bool:
    """Whether the task allows the next-token letter accuracy; target_accuracy needs it."""
    task = task_for(config.data.task)
    if config.train.target_accuracy is not None and not task.fast_validation:
        raise UsageError(f"train.target_accuracy: task {task.name} validates by loss (its answers are not "
                         "one-token labels); remove target_accuracy or use max_steps / max_seconds")  # fmt: skip
    return task.fast_validation
