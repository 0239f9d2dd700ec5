"""The driver side of training: one Ray Train TorchTrainer run over a TrainSpec.

Checkpoints live under <out_dir>/ray_train/<label>. A fresh run clears them; a resumed run
(`kdist train --resume`, TrainSpec.resume) keeps them, and Ray Train hands the latest to the
workers. Within one run, FailureConfig(max_failures) restarts a lost worker group from the
latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from kdist.errors import UsageError
from kdist.train.loop import TrainSpec, spec_to_dict, train_loop_per_worker

log = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 2


def run_training(spec: TrainSpec) -> dict[str, Any]:
    """Train on the Ray cluster this process is attached to; returns train_result.json."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    section = spec.section()
    check_vocabularies(spec)
    check_enough_rows(spec)
    out = Path(spec.out_dir).resolve()
    storage = out / "ray_train"
    if not spec.resume:
        shutil.rmtree(storage / spec.label, ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_result.json").unlink(missing_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec_to_dict(spec),
        scaling_config=ScalingConfig(
            num_workers=section.num_workers,
            use_gpu=section.use_gpu,
            resources_per_worker=None if section.use_gpu else {"CPU": 1},
        ),
        run_config=RunConfig(
            name=spec.label,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=section.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        ),
    )
    log.info("%s: %s, %s KD, on %d workers (ZeRO-%d)%s", spec.label, section.method,
             section.kd.mode, section.num_workers, section.zero_stage,
             " (resuming)" if spec.resume else "")
    trainer.fit()
    return json.loads((out / "train_result.json").read_text())


def check_enough_rows(spec: TrainSpec) -> None:
    """Before any worker starts: fewer rows than one batch can never make an optimizer step
    (the judge's filter may have left fewer than the prompts). Reads the Parquet footer only."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(spec.train_path).metadata.num_rows
    batch_size = spec.section().batch_size
    if rows < batch_size:
        raise UsageError(f"{spec.train_path} has {rows} rows, fewer than train.batch_size "
                         f"({batch_size}); lower train.batch_size or train on more rows")


def check_vocabularies(spec: TrainSpec) -> None:
    """Before any worker starts: online logit KD needs teacher and student to share a
    vocabulary (raises VocabularyMismatch, one line). Reads tokenizers and configs only."""
    section = spec.section()
    if section.kd.mode != "logit" or section.kd.teacher_logits != "online":
        return
    from transformers import AutoConfig, AutoTokenizer

    from kdist.train.tokenizers_compat import check_logit_kd_compatible

    if not spec.teacher_model_dir or not Path(spec.teacher_model_dir).is_dir():
        raise UsageError("train.kd.teacher_logits=online needs the teacher as a local model "
                         f"dir (teacher.model is {spec.teacher_model_dir!r})")
    check_logit_kd_compatible(
        AutoTokenizer.from_pretrained(spec.teacher_model_dir),
        AutoTokenizer.from_pretrained(spec.model_dir),
        AutoConfig.from_pretrained(spec.teacher_model_dir).vocab_size,
        AutoConfig.from_pretrained(spec.model_dir).vocab_size,
    )
