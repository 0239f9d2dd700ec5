"""The DeepSpeed config, derived from the run config's train section.

ZeRO stage 0-3, optional CPU offload of the optimizer state (stage >= 1) and of the parameters
(stage 3), bf16, gradient accumulation, gradient clipping, AdamW and a warmup schedule
(constant, linear or cosine decay after it). A user's own JSON (train.deepspeed_config) is laid
over the derived config key by key; a value "auto" there keeps the derived one, so batch sizes
always agree with the run config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdist.config import TrainSection


def micro_batch_size(train: TrainSection) -> int:
    """Rows per worker per forward pass: batch_size = micro x workers x accumulation steps."""
    per_step = train.num_workers * train.gradient_accumulation_steps
    micro, remainder = divmod(train.batch_size, per_step)
    if micro < 1 or remainder:
        raise ValueError(
            f"train.batch_size ({train.batch_size}) must be a positive multiple of "
            f"train.num_workers x train.gradient_accumulation_steps ({per_step})"
        )
    return micro


def warmup_steps(train: TrainSection) -> int:
    if train.warmup_steps is not None:
        return min(train.warmup_steps, train.max_steps)
    return max(1, min(50, train.max_steps // 10))


def deepspeed_config(train: TrainSection) -> dict[str, Any]:
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size(train),
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.batch_size,
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,  # kdist logs its own metrics
        "wall_clock_breakdown": False,
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW: DeepSpeed's fused CPU Adam would compile a C++ op at first use.
            "params": {"lr": train.learning_rate, "betas": [0.9, 0.98], "weight_decay": 0.0,
                       "torch_adam": True},
        },
        "scheduler": _scheduler(train),
        "zero_optimization": _zero(train),
        "bf16": {"enabled": train.precision == "bf16"},
    }
    if train.deepspeed_config:
        config = overlay(config, _read_user_config(train.deepspeed_config))
    return config


def _scheduler(train: TrainSection) -> dict[str, Any]:
    warmup = warmup_steps(train)
    # DeepSpeed refuses warmup_num_steps 0 (it raised inside the workers for warmup_steps: 0):
    # no warmup is one warmup step whose minimum is the full learning rate.
    start = train.learning_rate if warmup == 0 else 0.0
    warmup = max(warmup, 1)
    if train.lr_schedule == "constant":
        return {"type": "WarmupLR", "params": {
            "warmup_min_lr": start, "warmup_max_lr": train.learning_rate,
            "warmup_num_steps": warmup, "warmup_type": "linear"}}
    if train.lr_schedule == "linear":
        return {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": start, "warmup_max_lr": train.learning_rate,
            "warmup_num_steps": warmup, "total_num_steps": train.max_steps,
            "warmup_type": "linear"}}
    return {"type": "WarmupCosineLR", "params": {
        "total_num_steps": train.max_steps, "warmup_num_steps": warmup,
        "warmup_min_ratio": start / train.learning_rate, "cos_min_ratio": 0.0, "warmup_type": "linear"}}


def _zero(train: TrainSection) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage == 3:
        # Saving gathers the full 16-bit weights onto rank 0 (a collective on all ranks).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if train.offload_optimizer and train.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": train.use_gpu}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": train.use_gpu}
    return zero


def overlay(base: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """`user` laid over `base`, recursively; "auto" in `user` keeps `base`'s value."""
    merged = dict(base)
    for key, value in user.items():
        if value == "auto":
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_user_config(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"train.deepspeed_config: no file at {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"train.deepspeed_config: {path} is not valid JSON ({err.msg}, "
                         f"line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"train.deepspeed_config: {path} must hold a JSON object")
    return data
