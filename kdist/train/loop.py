"""What every Ray Train worker runs: load, wrap in DeepSpeed, train, check, save.

All ranks take the same decisions at the same steps (stop early, evaluate, save) so that no
rank waits forever in a collective: the stop decision is all-reduced, and evaluation runs on
every rank (under ZeRO-3 a forward pass needs all of them).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdist.config import TrainSection


@dataclass
class TrainSpec:
    """Everything a worker needs, as plain data (it travels to the workers by pickle)."""

    model_dir: str
    train_path: str  # Parquet of chat rows (kdist.rows.SFT_SCHEMA)
    eval_path: str | None  # same format; accuracy against the last (assistant) turn
    out_dir: str
    train: dict[str, Any]
    seed: int = 0
    label: str = "train"

    def section(self) -> TrainSection:
        return TrainSection.model_validate(self.train)


def train_loop_per_worker(spec_dict: dict[str, Any]) -> None:
    import deepspeed
    import ray.train
    import torch

    from kdist.train.deepspeed_config import deepspeed_config

    spec = TrainSpec(**spec_dict)
    section = spec.section()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(spec.seed)

    tokenizer, model = _load_model(spec, section)
    loader, sampler = _train_loader(spec, section, tokenizer, rank, world)
    eval_rows = _eval_rows(spec.eval_path)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=trainable, config=deepspeed_config(section)
    )
    metrics_file = Path(spec.out_dir) / "metrics.jsonl"
    step, epoch, started = 0, 0, time.monotonic()
    accuracy, done = None, False
    while not done:
        sampler.set_epoch(epoch)
        for batch in loader:
            loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss
            engine.backward(loss)
            engine.step()
            step += 1
            last = step >= section.max_steps
            if step % section.eval_every and not last:
                continue
            accuracy = _choice_accuracy(engine.module, tokenizer, eval_rows)
            elapsed = time.monotonic() - started
            record = {"step": step, "epoch": epoch, "loss": loss.item(), "accuracy": accuracy,
                      "lr": engine.get_lr()[0], "seconds": round(elapsed, 1)}
            if rank == 0:
                _append_jsonl(metrics_file, record)
                print(f"[{spec.label}] step {step}/{section.max_steps} loss {loss.item():.4f} "
                      f"val_acc {accuracy:.3f} ({elapsed:.0f}s)", flush=True)
            ray.train.report(record)
            done = last or _all_agree_to_stop(section, accuracy, elapsed)
            if done:
                break
        epoch += 1
    if rank == 0:
        _save(engine.module, tokenizer, spec, section, accuracy, step)


def _load_model(spec: TrainSpec, section: TrainSection):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    dtype = torch.bfloat16 if section.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=dtype)
    if section.method == "lora":
        from kdist.train.lora import apply_lora

        model = apply_lora(model, section.lora)
    return tokenizer, model


def _train_loader(spec: TrainSpec, section: TrainSection, tokenizer, rank: int, world: int):
    """Each rank reads the rows and takes its own shard: equal sizes on every rank (drop_last),
    so all ranks run the same number of steps per epoch and meet in every all-reduce."""
    import pyarrow.parquet as pq
    from torch.utils.data import DataLoader, DistributedSampler

    from kdist.train.deepspeed_config import micro_batch_size
    from kdist.train.examples import pad_batch, tokenize_chat

    rows = pq.read_table(spec.train_path, columns=["messages"]).to_pylist()
    examples = [tokenize_chat(tokenizer, r["messages"], section.max_seq_len) for r in rows]
    sampler = DistributedSampler(
        examples, num_replicas=world, rank=rank, shuffle=True, seed=spec.seed, drop_last=True
    )
    loader = DataLoader(
        examples,
        batch_size=micro_batch_size(section),
        sampler=sampler,
        drop_last=True,
        collate_fn=lambda batch: pad_batch(batch, tokenizer.pad_token_id),
    )
    if len(loader) == 0:
        raise ValueError(f"{spec.train_path}: too few rows ({len(rows)}) for one batch")
    return loader, sampler


def _eval_rows(eval_path: str | None) -> list[dict[str, Any]]:
    if not eval_path:
        return []
    import pyarrow.parquet as pq

    from kdist.data.tasks import parse_choice

    rows = pq.read_table(eval_path, columns=["messages"]).to_pylist()
    return [
        {"messages": r["messages"][:-1], "reference": parse_choice(r["messages"][-1]["content"])}
        for r in rows
    ]


def _choice_accuracy(model, tokenizer, rows) -> float:
    from kdist.train.accuracy import choice_accuracy

    return choice_accuracy(model, tokenizer, rows) if rows else float("nan")


def _all_agree_to_stop(section: TrainSection, accuracy: float, elapsed: float) -> bool:
    import torch
    import torch.distributed as dist

    stop = (section.target_accuracy is not None and accuracy >= section.target_accuracy) or (
        section.max_seconds is not None and elapsed >= section.max_seconds
    )
    flag = torch.tensor([1.0 if stop else 0.0])
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _save(model, tokenizer, spec: TrainSpec, section: TrainSection, accuracy, steps: int) -> None:
    from kdist import io

    out = Path(spec.out_dir)
    if section.method == "lora":
        from kdist.train.lora import save_adapter_and_merged

        save_adapter_and_merged(model, tokenizer, out)
    else:
        with io.atomic_dir(out / "model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    io.write_json(out / "train_result.json", {"steps": steps, "val_accuracy": accuracy,
                                              "method": section.method})


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def spec_to_dict(spec: TrainSpec) -> dict[str, Any]:
    return asdict(spec)
