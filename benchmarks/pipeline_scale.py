"""Does the pipeline stream? prepare + generate + judge + filter at growing sizes, side by side.

Each size runs in a fresh driver process (so its peak RSS is its own) against one loopback
OpenAI-compatible server in a process of its own, with no latency: prepare (synthetic
multiple choice), generate (openai backend, 2 replicas x 32 requests in flight), the rule
judge and the filter. Then prepare alone at larger sizes. Reported per size: each stage's
seconds (Ray start-up excluded), generate's rows/s, and the driver's peak RSS (the kdist
process alone: Ray's workers are other processes). Targets (issue 9): the driver's peak RSS
grows less than 20% from the smallest to the largest pipeline size and across the prepare
sizes; generate's rows/s at the largest size is at least 0.8 of the smallest.
Last line: {"benchmark": "pipeline_scale", "figures": {...}, "params": {...}}.

    python benchmarks/pipeline_scale.py [--pipeline-rows 20000 60000 200000] [--prepare-rows 300000 3000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any


def child(mode: str, rows: int, endpoint: str, out: str) -> dict[str, Any]:
    """One driver: the stages of `mode` over `rows` prompts; seconds per stage and peak RSS."""
    from kdist.config import validate_config
    from kdist.runtime import ray_session
    from kdist.stages import BY_NAME, StageContext

    config = validate_config({
        "run": {"output_dir": out}, "runtime": {"log_to_driver": False},
        "data": {"source": {"kind": "synthetic_mc", "teacher_train": 0, "train": rows, "validation": 1, "test": 1}},
        "teacher": {"kind": "openai", "model": "bench", "endpoint": endpoint, "concurrency": 32, "batch_size": 64,
                    "replicas": 2, "sampling": {"max_tokens": 4}},
        "student": {"model": "unused"},
    })  # fmt: skip
    stages = ["prepare"] if mode == "prepare" else ["prepare", "generate", "judge", "filter"]
    seconds: dict[str, float] = {}
    with ray_session(config):
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        context = StageContext(config, out)
        for stage in stages:
            start = time.perf_counter()
            BY_NAME[stage].run(context)
            seconds[stage] = round(time.perf_counter() - start, 1)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "driver_peak_rss_mib": round(peak_mib, 1)}


def run_child(mode: str, rows: int, endpoint: str) -> dict[str, Any]:
    out = tempfile.mkdtemp(prefix=f"kdist-scale-{mode}-{rows}-")
    command = [sys.executable, __file__, "--child", mode, "--rows", str(rows), "--endpoint", endpoint, "--out", out]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{mode} at {rows} rows failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    subprocess.run(["rm", "-rf", out], check=False)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline-rows", type=int, nargs="+", default=[20_000, 60_000, 200_000])
    parser.add_argument("--prepare-rows", type=int, nargs="+", default=[300_000, 3_000_000])
    parser.add_argument("--child", choices=["pipeline", "prepare"])
    parser.add_argument("--rows", type=int)
    parser.add_argument("--endpoint")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.endpoint, args.out)))
        return

    from kdist.testing.llm_server import LLMServer, ServerSettings

    figures: dict[str, Any] = {}
    with LLMServer(ServerSettings(), in_subprocess=True) as server:
        for rows in args.pipeline_rows:
            measured = run_child("pipeline", rows, server.openai_base_url)
            generate_rows_per_s = round(rows / measured["seconds"]["generate"], 1)
            figures[f"pipeline_{rows}"] = {**measured, "generate_rows_per_s": generate_rows_per_s}
            print(f"pipeline {rows}: {measured} generate {generate_rows_per_s} rows/s", flush=True)
    for rows in args.prepare_rows:
        measured = run_child("prepare", rows, "http://127.0.0.1:9/v1")
        figures[f"prepare_{rows}"] = {**measured, "prepare_rows_per_s": round(rows / measured["seconds"]["prepare"], 1)}
        print(f"prepare {rows}: {measured}", flush=True)
    small, large = (figures[f"pipeline_{n}"] for n in (args.pipeline_rows[0], args.pipeline_rows[-1]))
    figures["pipeline_rss_growth"] = round(large["driver_peak_rss_mib"] / small["driver_peak_rss_mib"] - 1, 3)
    figures["generate_rows_per_s_ratio"] = round(large["generate_rows_per_s"] / small["generate_rows_per_s"], 3)
    first, last = (figures[f"prepare_{n}"] for n in (args.prepare_rows[0], args.prepare_rows[-1]))
    figures["prepare_rss_growth"] = round(last["driver_peak_rss_mib"] / first["driver_peak_rss_mib"] - 1, 3)
    params = {"pipeline_rows": args.pipeline_rows, "prepare_rows": args.prepare_rows, "replicas": 2, "concurrency": 32,
              "latency_s": 0.0, "cpus": os.cpu_count(), "python": platform.python_version()}  # fmt: skip
    print(json.dumps({"benchmark": "pipeline_scale", "figures": figures, "params": params}))


if __name__ == "__main__":
    main()
