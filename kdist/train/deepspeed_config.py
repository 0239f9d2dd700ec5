"""The DeepSpeed config, derived from the run config's train section."""

from __future__ import annotations

from typing import Any

from kdist.config import TrainSection


def micro_batch_size(train: TrainSection) -> int:
    per_worker, remainder = divmod(train.batch_size, train.num_workers)
    if per_worker < 1 or remainder:
        raise ValueError(
            f"train.batch_size ({train.batch_size}) must be a positive multiple of "
            f"train.num_workers ({train.num_workers})"
        )
    return per_worker


def deepspeed_config(train: TrainSection) -> dict[str, Any]:
    warmup = max(1, min(50, train.max_steps // 10))
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size(train),
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,  # kdist logs its own metrics
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW: DeepSpeed's fused CPU Adam would compile a C++ op at first use.
            "params": {"lr": train.learning_rate, "betas": [0.9, 0.98], "weight_decay": 0.0,
                       "torch_adam": True},
        },
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": train.learning_rate,
                       "warmup_num_steps": warmup, "warmup_type": "linear"},
        },
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
    }
