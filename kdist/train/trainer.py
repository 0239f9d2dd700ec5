"""The driver side of training: one Ray Train TorchTrainer run over a TrainSpec."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kdist.train.loop import TrainSpec, spec_to_dict, train_loop_per_worker

log = logging.getLogger(__name__)


def run_training(spec: TrainSpec) -> dict[str, Any]:
    """Train on the Ray cluster this process is attached to; returns train_result.json."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    section = spec.section()
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec_to_dict(spec),
        scaling_config=ScalingConfig(
            num_workers=section.num_workers,
            use_gpu=section.use_gpu,
            resources_per_worker=None if section.use_gpu else {"CPU": 1},
        ),
        run_config=RunConfig(name=spec.label, storage_path=str((out / "ray_train").resolve())),
    )
    log.info("%s: %s on %d workers (ZeRO-%d)", spec.label, section.method,
             section.num_workers, section.zero_stage)
    trainer.fit()
    return json.loads((out / "train_result.json").read_text())
