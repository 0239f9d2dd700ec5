"""Training memory per worker with a real-sized vocabulary: where the memory goes, per phase.

A randomly initialised Gemma-3-270M-shaped student (Gemma3ForCausalLM from a Gemma3TextConfig:
hidden 640, 18 layers, 4 heads of 256 (1 KV head), MLP 2048, vocabulary 262,144, tied
embeddings; built offline, no hub), LoRA at kdist's defaults (r 16, all linear layers), 2 Ray
Train workers at ZeRO-2, fp32, batch 4 x 64 tokens, a validation split of --val-rows rows
(validation loss through the chunked objective, and choice accuracy).

The tokenizer is kdist's offline byte-level BPE (a few hundred tokens): the model's 262k rows
of embedding and head are what cost memory, and they are all there; a real 262k tokenizer
adds its own few tens of MB to each process.

Figures: for each worker, the peak RSS of each phase above that process's RSS before the model
is loaded (kdist.train.memory; the loop writes <out>/memory/rank<N>.json): load, setup (data,
DeepSpeed's initialize, the optimizer), steps, validation, checkpoint, save (merge + save, rank
0), and each phase's rise (what it added to the RSS it started with). Target: every phase's
peak at most 3x the model's fp32 weight size.

Usage: python benchmarks/train_memory.py [--steps 4] [--val-rows 128]
(run it under `flock /tmp/kdist-heavy.lock` on a shared machine). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
             num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262_144)


def build_student(out: Path, texts: list[str]) -> int:
    """Tokenizer + random Gemma-3-shaped model in `out`; returns the parameter count."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from kdist import modelkit

    tokenizer = modelkit.train_tokenizer(texts, 600, out)
    torch.manual_seed(0)
    config = Gemma3TextConfig(**SHAPE, max_position_embeddings=2048,
                              pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    model = Gemma3ForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())  # tied: the embedding counts once
    del model
    gc.collect()
    return params


def write_rows(path: Path, n: int, seed: int, split: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdist.data import synthetic
    from kdist.rows import SFT_SCHEMA

    rows = [{"id": f"{split}-{i}", "top_logprobs": None,
             "messages": [*q.messages(), {"role": "assistant", "content": q.answer}]}
            for _, i, q in synthetic.generate({split: n}, seed)]
    pq.write_table(pa.Table.from_pylist(rows, schema=SFT_SCHEMA), path)
    return str(path)


def run(tmp: Path, args) -> tuple[list[dict], int]:
    from kdist.config import validate_config
    from kdist.data import synthetic
    from kdist.runtime import ray_session
    from kdist.train.loop import MEMORY_DIR, TrainSpec
    from kdist.train.trainer import run_training

    questions = [q.user_message() for _, _, q in synthetic.generate({"train": 200}, 0)]
    model_dir = tmp / "student"
    params = build_student(model_dir, synthetic.vocabulary_text() + questions)
    train = {"method": "lora", "num_workers": 2, "zero_stage": 2, "batch_size": 4,
             "max_seq_len": 64, "max_steps": args.steps, "eval_every": args.steps // 2,
             "learning_rate": 1e-4, "warmup_steps": 1}
    spec = TrainSpec(model_dir=str(model_dir),
                     train_path=write_rows(tmp / "train.parquet", 64, 1, "train"),
                     eval_path=write_rows(tmp / "val.parquet", args.val_rows, 2, "validation"),
                     out_dir=str(tmp / "out"), train=train, label="memory")
    config = validate_config({"teacher": {"model": "-"}, "student": {"model": "-"},
                              "runtime": {"num_cpus": 2, "log_to_driver": False}})
    with ray_session(config):
        run_training(spec)
    ranks = sorted((tmp / "out" / MEMORY_DIR).glob("rank*.json"))
    return [json.loads(p.read_text()) for p in ranks], params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--val-rows", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdist-train-memory-") as tmp_name:
        ranks, params = run(Path(tmp_name), args)
    weights_mib = params * 4 / 2**20
    figures = {"fp32_weights_mib": round(weights_mib, 1),
               "target_mib": round(3 * weights_mib, 1)}
    worst = 0.0
    for rank, record in enumerate(ranks):
        figures[f"rank{rank}_baseline_rss_mib"] = record["baseline_mib"]
        for phase, mib in record["peak_above_baseline_mib"].items():
            figures[f"rank{rank}_{phase}_peak_mib"] = mib
            figures[f"rank{rank}_{phase}_rise_mib"] = record["rise_mib"][phase]
            worst = max(worst, mib)
    figures["worst_phase_peak_mib"] = worst
    figures["worst_over_weights"] = round(worst / weights_mib, 2)
    figures["target_met"] = worst <= 3 * weights_mib
    print(json.dumps({
        "benchmark": "train_memory",
        "figures": figures,
        "params": {**vars(args), "model": "Gemma3ForCausalLM (random), " + ", ".join(
                       f"{k} {v}" for k, v in SHAPE.items()), "parameters": params,
                   "train": "LoRA r16 all-linear, 2 workers, ZeRO-2, fp32, batch 4 x 64",
                   "per_phase_reset": all(r["per_phase"] for r in ranks),
                   "machine": f"{platform.machine()} {os.cpu_count()} cores, torch "
                              f"{__import__('torch').__version__}"},
    }))


if __name__ == "__main__":
    main()
