"""Teacher fan-out throughput against kdist's test endpoint (100 ms per request).

Compares the async backends (bounded concurrency on one event loop) with the sequential loop
of the classic distillation notebooks (one blocking client call per row), and with the ideal
rate concurrency / latency. The server runs in its own process so that it does not share the
client's core. Last line: {"benchmark": "teacher_fanout", "figures": {...}, "params": {...}}.

    python benchmarks/teacher_fanout.py [--rows 5000] [--latency 0.1] [--concurrency 64 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import openai

from kdist.endpoints import AzureEndpoint, OpenAIEndpoint
from kdist.llm.azure import AzureBackend
from kdist.llm.base import ChatRequest, request_hash
from kdist.llm.openai import OpenAIBackend
from kdist.testing.llm_server import LLMServer, ServerSettings

BACKENDS = {"openai": OpenAIBackend, "azure": AzureBackend}
ENDPOINTS = {"openai": OpenAIEndpoint, "azure": AzureEndpoint}


def requests_for(count: int, offset: int) -> list[ChatRequest]:
    out = []
    for i in range(offset, offset + count):
        messages = [{"role": "user", "content": f"Row {i}: which colour? A) red B) green C) blue"}]
        out.append(ChatRequest(id=str(i), messages=messages, request_hash=request_hash("bench", messages, {})))
    return out


def sequential_rows_per_s(server: LLMServer, rows: int) -> float:
    """One blocking call per row, as in a notebook loop."""
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="none", max_retries=0)
    start = time.perf_counter()
    for request in requests_for(rows, offset=10_000_000):
        client.chat.completions.create(model="bench", messages=request.messages, max_tokens=4)
    elapsed = time.perf_counter() - start
    client.close()
    return rows / elapsed


def fanout_rows_per_s(server: LLMServer, kind: str, concurrency: int, rows: int, offset: int) -> tuple[float, int, float]:
    """(rows/s, failed rows, client CPU ms per request); CPU time does not depend on how busy
    the (shared) machine is, so it shows what one core can drive."""
    endpoint = server.openai_base_url if kind == "openai" else server.base_url
    section = ENDPOINTS[kind](
        model="bench", endpoint=endpoint, api_key_env="KDIST_BENCH_KEY", concurrency=concurrency,
        sampling={"max_tokens": 4},
    )  # fmt: skip
    teacher = BACKENDS[kind](section)
    batch = requests_for(rows, offset)
    teacher.generate(requests_for(concurrency, offset=20_000_000 + offset))  # connections, warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    responses = teacher.generate(batch)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    teacher.close()
    failed = sum(1 for r in responses if r.error)
    return rows / elapsed, failed, cpu / rows * 1000


def stage_rows_per_s(server: LLMServer, rows: int, replicas: int, concurrency: int) -> float:
    """Through kdist's generate stage on Ray Data: `replicas` actors of `concurrency` each.

    Steady state: rows written after the first shard over the time between the first and the
    last shard (Ray start-up and actor start-up excluded)."""
    import tempfile
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdist.config import RunConfig
    from kdist.rows import PROMPT_SCHEMA
    from kdist.runtime import ray_session
    from kdist.stages import BY_NAME, StageContext

    work = Path(tempfile.mkdtemp(prefix="kdist-fanout-"))
    prompts = [
        {"id": f"s{i}", "task": "chat", "messages": r.messages, "reference": None, "split": "train", "meta": "{}"}
        for i, r in enumerate(requests_for(rows, offset=30_000_000))
    ]
    (work / "prompts").mkdir()
    pq.write_table(pa.Table.from_pylist(prompts, schema=PROMPT_SCHEMA), work / "prompts" / "part-0.parquet")
    teacher = {
        "kind": "openai", "model": "bench", "endpoint": server.openai_base_url, "api_key_env": "KDIST_BENCH_KEY",
        "concurrency": concurrency, "batch_size": concurrency, "replicas": replicas, "splits": ["train"],
        "sampling": {"max_tokens": 4},
    }  # fmt: skip
    config = RunConfig(teacher=teacher, student={"model": "unused"}, runtime={"log_to_driver": False})
    with ray_session(config):
        BY_NAME["generate"].run(StageContext(config, str(work)))
    shards = sorted((work / "responses" / "answers").glob("part-*.parquet"), key=lambda f: f.stat().st_mtime)
    later_rows = sum(pq.read_metadata(f).num_rows for f in shards[1:])
    return later_rows / (shards[-1].stat().st_mtime - shards[0].stat().st_mtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--sequential-rows", type=int, default=50, help="rows timed for the blocking loop")
    parser.add_argument("--backends", nargs="+", default=["openai", "azure"], choices=sorted(BACKENDS))
    parser.add_argument("--stage-replicas", type=int, default=2, help="generate stage: actors (0: skip)")
    args = parser.parse_args()
    os.environ.setdefault("KDIST_BENCH_KEY", "bench")

    figures: dict[str, float] = {}
    with LLMServer(ServerSettings(latency_s=args.latency), in_subprocess=True) as server:
        sequential = sequential_rows_per_s(server, args.sequential_rows)
        figures["sequential_rows_per_s"] = round(sequential, 2)
        print(f"sequential blocking loop: {sequential:.2f} rows/s")
        for index, kind in enumerate(args.backends):
            for concurrency in args.concurrency:
                rate, failed, cpu_ms = fanout_rows_per_s(server, kind, concurrency, args.rows, offset=(index * 10 + concurrency) * 100_000)
                ideal = concurrency / args.latency
                tag = f"{kind}_c{concurrency}"
                figures[f"{tag}_rows_per_s"] = round(rate, 1)
                figures[f"{tag}_ratio_of_ideal"] = round(rate / ideal, 3)
                figures[f"{tag}_x_sequential"] = round(rate / sequential, 1)
                figures[f"{tag}_failed"] = failed
                figures[f"{tag}_client_cpu_ms_per_request"] = round(cpu_ms, 2)
                print(f"{kind} concurrency {concurrency}: {rate:.1f} rows/s = {rate / ideal:.2f} of ideal "
                      f"({ideal:.0f}/s), {rate / sequential:.1f}x sequential, {failed} failed, {cpu_ms:.2f} ms CPU/request")  # fmt: skip
        figures["server_max_in_flight"] = server.stats()["max_in_flight"]
        if args.stage_replicas:
            per_actor = args.concurrency[0] // args.stage_replicas
            rate = stage_rows_per_s(server, args.rows, args.stage_replicas, per_actor)
            ideal = args.concurrency[0] / args.latency
            tag = f"stage_{args.stage_replicas}x{per_actor}"
            figures[f"{tag}_rows_per_s"] = round(rate, 1)
            figures[f"{tag}_ratio_of_ideal"] = round(rate / ideal, 3)
            figures[f"{tag}_x_sequential"] = round(rate / sequential, 1)
            print(f"generate stage, openai, {args.stage_replicas} actors x {per_actor}: {rate:.1f} rows/s = "
                  f"{rate / ideal:.2f} of ideal ({ideal:.0f}/s), {rate / sequential:.1f}x sequential")  # fmt: skip
    params = {
        "rows": args.rows,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "sequential_rows": args.sequential_rows,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "openai": openai.__version__,
        "load_average_at_end": os.getloadavg()[0],
    }
    print(json.dumps({"benchmark": "teacher_fanout", "figures": figures, "params": params}))


if __name__ == "__main__":
    main()
