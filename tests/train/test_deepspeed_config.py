"""The DeepSpeed config follows the run config; a user's JSON overrides it key by key."""

from __future__ import annotations

import json

import pytest

from kdist.config import TrainSection
from kdist.train.deepspeed_config import deepspeed_config, micro_batch_size


def test_batch_sizes_agree_with_workers_and_accumulation():
    section = TrainSection(batch_size=32, num_workers=2, gradient_accumulation_steps=4)
    config = deepspeed_config(section)
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 4
    assert config["train_batch_size"] == 32
    with pytest.raises(ValueError, match="multiple of train.num_workers x train.gradient_acc"):
        micro_batch_size(TrainSection(batch_size=12, num_workers=2, gradient_accumulation_steps=4))


def test_zero_offload_precision_and_schedules():
    section = TrainSection(zero_stage=3, offload_optimizer=True, offload_params=True,
                           precision="bf16", lr_schedule="cosine", max_steps=200, warmup_steps=20)
    config = deepspeed_config(section)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert config["bf16"]["enabled"]
    assert config["scheduler"]["type"] == "WarmupCosineLR"
    assert config["scheduler"]["params"]["warmup_num_steps"] == 20
    assert config["optimizer"]["params"]["torch_adam"]  # nothing compiles on CPU
    linear = deepspeed_config(TrainSection(lr_schedule="linear", max_steps=100))
    assert linear["scheduler"]["type"] == "WarmupDecayLR"
    assert linear["scheduler"]["params"]["total_num_steps"] == 100
    assert "offload_optimizer" not in deepspeed_config(TrainSection())["zero_optimization"]


def test_offload_params_needs_zero3():
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        TrainSection(offload_params=True, zero_stage=2)


def test_user_json_overrides_and_auto_keeps_derived(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": "auto",
        "zero_optimization": {"stage": 1, "reduce_bucket_size": 5e7},
        "gradient_clipping": 0.5,
    }))
    config = deepspeed_config(TrainSection(batch_size=8, deepspeed_config=str(user)))
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 5e7}
    assert config["gradient_clipping"] == 0.5 and config["optimizer"]["type"] == "AdamW"


def test_bad_user_json_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match=r"train.deepspeed_config: .*bad.json is not valid JSON"):
        deepspeed_config(TrainSection(deepspeed_config=str(bad)))
    with pytest.raises(ValueError, match="no file at"):
        deepspeed_config(TrainSection(deepspeed_config=str(tmp_path / "missing.json")))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_no_warmup_builds_and_runs_at_the_full_learning_rate(schedule):
    """warmup_steps 0 builds DeepSpeed's own scheduler (which refuses warmup_num_steps 0, and
    raised inside the workers) and runs at the configured rate from the second step on (the
    first step of DeepSpeed's warmup schedulers can start at their minimum); with warmup the
    rate climbs."""
    import torch
    from deepspeed.runtime import lr_schedules

    def first_lrs(section: TrainSection) -> list[float]:
        scheduler = deepspeed_config(section)["scheduler"]
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=section.learning_rate)
        built = getattr(lr_schedules, scheduler["type"])(optimizer, **scheduler["params"])
        lrs = []
        for _ in range(3):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            built.step()
        return lrs

    none = first_lrs(TrainSection(lr_schedule=schedule, max_steps=100, warmup_steps=0, learning_rate=1e-3))
    assert none[1:] == pytest.approx([1e-3, 1e-3], rel=0.01)
    warm = first_lrs(TrainSection(lr_schedule=schedule, max_steps=100, warmup_steps=10, learning_rate=1e-3))
    assert warm[0] <= warm[1] < warm[2] < 1e-3
