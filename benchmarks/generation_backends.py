"""Generation throughput: the vllm backend (vLLM engine under Ray Data) vs the hf backend
(transformers generate in Ray Data actors), same prompts, same tiny offline model, one run.

Two figures per backend:
- end to end: kdist's generate stage (kdist.stages.generate), model load / engine start
  included; with a few hundred prompts start-up dominates, so this is not a rate to scale by;
- generation: generated tokens over the time the model spent generating, start-up excluded.
  hf: from the first batch's start to the last batch's end in its actors; vllm: the longest
  request of the run (all batches are admitted to the engine at once, so that is the window
  from the first request to the last answer), read from ray.data.llm's `time_taken_llm`.

    python benchmarks/generation_backends.py [--prompts 300] [--max-tokens 32]

Last line: {"benchmark": "generation_backends", "figures": {...}, "params": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def build_model(out: Path, hidden: int, layers: int, heads: int, texts: list[str]) -> None:
    from kdist import modelkit
    from kdist.config import ModelBuildSection
    from kdist.data import synthetic

    tokenizer = modelkit.train_tokenizer(synthetic.vocabulary_text() + texts, 600, out)
    build = ModelBuildSection(hidden_size=hidden, num_layers=layers, num_heads=heads, max_position_embeddings=256)
    modelkit.build_llama(build, tokenizer, out)


def teacher_section(kind: str, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    teacher: dict[str, Any] = {
        "kind": kind, "model": str(model), "splits": ["train"], "min_success_ratio": 0.0,
        "batch_size": args.hf_batch if kind == "hf" else args.vllm_batch,
        "replicas": args.hf_replicas if kind == "hf" else 1,
        "sampling": {"temperature": 0.0, "max_tokens": args.max_tokens},
    }  # fmt: skip
    if kind == "vllm":
        teacher["engine_kwargs"] = {"max_model_len": 256, "dtype": args.vllm_dtype}
    return teacher


def end_to_end(kind: str, model: Path, out: Path, args: argparse.Namespace) -> tuple[float, int]:
    from kdist.config import RunConfig
    from kdist.stages import BY_NAME, StageContext

    config = RunConfig(teacher=teacher_section(kind, model, args), student={"model": "unused"})
    start = time.perf_counter()
    # The stage reads <root>/prompts and writes <root>/responses.
    summary = BY_NAME["generate"].run(StageContext(config, str(out)))
    return time.perf_counter() - start, summary["completion_tokens"]


class _TimedHF:
    """The hf backend in a Ray Data actor, timing each batch (model load excluded)."""

    def __init__(self, model: str, sampling: dict[str, Any]) -> None:
        from kdist.endpoints import HFEndpoint
        from kdist.llm.hf import HFBackend

        self.teacher = HFBackend(HFEndpoint(model=model, sampling=sampling))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from kdist.llm.base import ChatRequest

        requests = [ChatRequest(id=str(i), messages=list(m), request_hash="") for i, m in zip(batch["id"], batch["messages"])]
        start = time.time()
        responses = self.teacher.generate(requests)
        return {"start": [start], "end": [time.time()], "tokens": [sum(r.completion_tokens for r in responses)]}


def generation_rate(kind: str, model: Path, prompts: Path, args: argparse.Namespace) -> tuple[float, int]:
    """(seconds spent generating, tokens generated), start-up excluded."""
    import ray
    from ray.data import ActorPoolStrategy

    from kdist.endpoints import HFEndpoint, VLLMEndpoint

    fields = {k: v for k, v in teacher_section(kind, model, args).items() if k not in ("splits", "min_success_ratio")}
    section = {"hf": HFEndpoint, "vllm": VLLMEndpoint}[kind](**fields)
    table = pq.read_table(prompts, columns=["id", "messages", "split"])
    rows = [{"id": r["id"], "request_hash": r["id"], "messages": r["messages"]} for r in table.to_pylist() if r["split"] == "train"]
    dataset = ray.data.from_items(rows)
    if kind == "hf":
        timed = dataset.map_batches(
            _TimedHF, fn_constructor_kwargs={"model": str(model), "sampling": section.sampling.model_dump()},
            batch_size=section.batch_size, compute=ActorPoolStrategy(size=section.replicas), num_cpus=1,
        ).take_all()  # fmt: skip
        return max(r["end"] for r in timed) - min(r["start"] for r in timed), sum(r["tokens"] for r in timed)
    from ray.data.llm import build_processor

    from kdist.llm.vllm import VLLMBackend

    teacher = VLLMBackend(section)
    processor = build_processor(
        teacher.processor_config(),
        preprocess=lambda row: {"messages": row["messages"], "sampling_params": teacher._sampling_params()},
        postprocess=lambda row: {"seconds": row["time_taken_llm"], "tokens": row["num_generated_tokens"]},
        preprocess_map_kwargs={"num_cpus": 0.1},
        postprocess_map_kwargs={"num_cpus": 0.1},
    )
    out = processor(dataset).take_all()
    return max(r["seconds"] for r in out), sum(r["tokens"] for r in out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4, help="head dim = hidden/heads; vLLM's CPU kernels need >= 32")
    parser.add_argument("--hf-batch", type=int, default=32)
    parser.add_argument("--hf-replicas", type=int, default=2)
    parser.add_argument("--vllm-batch", type=int, default=64, help="keep prompts/batch <= 8: all batches admitted at once")
    parser.add_argument("--vllm-dtype", default="float32", help="float32 like the hf backend on CPU, or bfloat16")
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"])
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()

    from kdist.config import DataSection, RunConfig
    from kdist.data import synthetic
    from kdist.stages.prepare import prompt_row
    from kdist.rows import PROMPT_SCHEMA
    from kdist.runtime import ray_session

    work = Path(tempfile.mkdtemp(prefix="kdist-genbench-"))
    source = {"kind": "synthetic_mc", "teacher_train": 0, "train": args.prompts, "validation": 1, "test": 1}
    data = DataSection(source=source)
    rows = [prompt_row(q, split, f"{split}-{i:06d}", data) for split, i, q in synthetic.generate({"train": args.prompts}, 0)]
    (work / "prompts").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA), work / "prompts" / "part-0.parquet")
    build_model(work / "model", args.hidden, args.layers, args.heads, [r["messages"][-1]["content"] for r in rows])

    figures: dict[str, float] = {}
    session = RunConfig(teacher={"model": "unused"}, student={"model": "unused"}, runtime={"log_to_driver": False})
    with ray_session(session):
        for kind in args.backends:
            seconds, tokens = generation_rate(kind, work / "model", work / "prompts", args)
            figures[f"{kind}_generation_s"] = round(seconds, 2)
            figures[f"{kind}_generation_tokens_per_s"] = round(tokens / seconds, 1)
            line = f"{kind}: generation {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tokens/s"
            if not args.skip_end_to_end:
                seconds, tokens = end_to_end(kind, work / "model", work, args)
                figures[f"{kind}_end_to_end_s"] = round(seconds, 1)
                figures[f"{kind}_end_to_end_tokens_per_s"] = round(tokens / seconds, 1)
                line += f"; end to end (generate stage) {tokens} tokens in {seconds:.1f} s"
            print(line, flush=True)
    if {"hf", "vllm"} <= set(args.backends):
        figures["vllm_over_hf_generation"] = round(
            figures["vllm_generation_tokens_per_s"] / figures["hf_generation_tokens_per_s"], 2
        )
        if not args.skip_end_to_end:
            figures["vllm_over_hf_end_to_end"] = round(figures["vllm_end_to_end_tokens_per_s"] / figures["hf_end_to_end_tokens_per_s"], 2)
    params = {**vars(args), "cpus": os.cpu_count(), "python": platform.python_version(), "load_average_at_end": os.getloadavg()[0]}
    print(json.dumps({"benchmark": "generation_backends", "figures": figures, "params": params}))


if __name__ == "__main__":
    main()
