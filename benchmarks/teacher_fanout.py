"""Teacher fan-out throughput against kdist's test endpoint (100 ms per request).

Compares the async backends (bounded concurrency on one event loop) with the sequential loop
of the classic distillation notebooks (one blocking client call per row), and with the ideal
rate concurrency / latency. The server runs in its own process so that it does not share the
client's core. Last line: {"benchmark": "teacher_fanout", "figures": {...}, "params": {...}}.

    python benchmarks/teacher_fanout.py [--rows 5000] [--latency 0.1] [--concurrency 64 256]

With `--peers ray_data_llm` (run it from `make bench-setup`'s .venv-bench), it then measures
Ray Data LLM's own HTTP processor (`HttpRequestProcessorConfig`) beside kdist's batch layer
(`run_inference`, the openai backend) in one Ray session, against one loopback endpoint at the
same number of requests in flight (the first --concurrency), once without faults and once with
10% of rows answered first by transient faults (429 with Retry-After, 503): rows/s over the
endpoint's first request to last reply, rows answered, rows failed or lost, requests sent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import openai

from kdist.endpoints import AzureEndpoint, OpenAIEndpoint
from kdist.llm.azure import AzureBackend
from kdist.llm.base import ChatRequest, request_hash
from kdist.llm.openai import OpenAIBackend
from kdist.testing.llm_server import FaultPlan, LLMServer, ServerSettings

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


# --- peers (issue 19) ---------------------------------------------------------------------------

PROMPT = "Row {i}: which colour? A) red B) green C) blue"


def peer_fault_plan(rate: float) -> FaultPlan:
    """`rate` of rows fail their first one or two attempts: half 429 (Retry-After 1 s), half 503."""
    return FaultPlan(transient={"rate_limit": rate / 2, "unavailable": rate / 2}, max_consecutive=2, retry_after_s=1.0, seed=19)


def served(server: LLMServer, rows: int, answered: int, failed: int) -> dict[str, float]:
    """What the endpoint saw of one run: its rate over first request to last reply."""
    stats = server.stats()
    span = (stats["last_reply_at"] or 0) - (stats["first_request_at"] or 0)
    return {"rows_per_s": round(answered / span, 1) if span > 0 else 0.0, "answered": answered, "failed": failed,
            "lost": rows - answered - failed, "requests": stats["total"], "max_in_flight": stats["max_in_flight"]}  # fmt: skip


def kdist_peer_run(server: LLMServer, rows: int, replicas: int, concurrency: int) -> dict[str, float]:
    """kdist's batch layer (what generate runs): `replicas` actors x `concurrency` in flight."""
    import tempfile

    import pyarrow as pa
    import ray.data

    from kdist.llm.batch import run_inference

    table = pa.Table.from_pylist([{"id": f"k{i}", "candidate": "teacher", "messages": [{"role": "user", "content": PROMPT.format(i=i)}]}
                                  for i in range(rows)])  # fmt: skip
    endpoint = OpenAIEndpoint(model="bench", endpoint=server.openai_base_url, api_key_env="KDIST_BENCH_KEY", replicas=replicas,
                              concurrency=concurrency, batch_size=concurrency, sampling={"max_tokens": 4})  # fmt: skip
    server.reset()
    result = run_inference(ray.data.from_arrow(table), endpoint, tempfile.mkdtemp(prefix="kdist-peer-"), expected_rows=rows)
    errors = result.store.read_all(["error"])["error"]
    failed = len(errors) - errors.null_count  # error rows: kdist keeps a row that ran out of retries
    return served(server, rows, errors.null_count, failed)


def ray_llm_peer_run(server: LLMServer, rows: int, actors: int, in_flight_per_actor: int, batch: int, max_retries: int) -> dict[str, float]:
    """Ray Data LLM's HTTP processor. It awaits a batch's requests one after another (aiohttp's
    `session.post` is lazy), so its requests in flight are actors x concurrent batches per
    task: Ray Data runs 4 batches of an async UDF at once unless its constant is raised, which
    we do (to `in_flight_per_actor`, for this run only) so that both clients keep the same
    number on the wire. qps is enforced per batch, not per processor: set above any batch's rate."""
    import ray.data
    from ray.data._internal.planner import plan_udf_map_op
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(
        url=server.openai_base_url + "/chat/completions", headers={"Authorization": "Bearer bench"}, qps=10 * actors * in_flight_per_actor,
        max_retries=max_retries, batch_size=batch, concurrency=actors, http_request_stage={"num_cpus": 0.1},
    )  # fmt: skip
    processor = build_processor(
        config,
        preprocess=lambda r: {"payload": {"model": "bench", "messages": [{"role": "user", "content": r["text"]}], "max_tokens": 4}},
        postprocess=lambda r: {"id": r["id"], "answer": r["http_response"]["choices"][0]["message"]["content"]},
        preprocess_map_kwargs={"num_cpus": 0.1}, postprocess_map_kwargs={"num_cpus": 0.1},
    )  # fmt: skip
    # blocks of in_flight_per_actor batches, so that one task holds that many batches at once
    blocks = max(1, rows // (batch * in_flight_per_actor))
    items = ray.data.from_items([{"id": f"r{i}", "text": PROMPT.format(i=i)} for i in range(rows)], override_num_blocks=blocks)
    default = plan_udf_map_op.DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY
    plan_udf_map_op.DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY = in_flight_per_actor
    server.reset()
    answered, error = 0, ""
    try:
        for out in processor(items).iter_batches(batch_size=None):
            answered += len(out["id"])
    except Exception as exc:  # its rows past max_retries fail the whole dataset
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    finally:
        plan_udf_map_op.DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY = default
    figures = served(server, rows, answered, 0)
    print(f"ray_data_llm max_retries={max_retries}: {figures} {error}", file=sys.stderr)
    return {**figures, "died": bool(error)}


def peer_figures(args) -> dict[str, float]:
    """kdist and Ray Data LLM side by side, without faults and with args.fault_rate."""
    import ray

    from kdist.config import validate_config
    from kdist.runtime import ray_session

    slots, replicas = args.concurrency[0], args.stage_replicas or 2
    figures: dict[str, float] = {}
    config = validate_config({"teacher": {"model": "t"}, "student": {"model": "s"}, "runtime": {"log_to_driver": False}})
    for tag, rate in (("clean", 0.0), (f"faults{round(args.fault_rate * 100)}", args.fault_rate)):
        settings = ServerSettings(latency_s=args.latency, faults=peer_fault_plan(rate))
        with LLMServer(settings, in_subprocess=True) as server, ray_session(config):
            runs = {"kdist": kdist_peer_run(server, args.rows, replicas, slots // replicas)}
            # max_retries: its default (0) and enough for these faults (each row fails 2 at most)
            for retries in args.ray_max_retries:
                runs[f"ray_data_llm_r{retries}"] = ray_llm_peer_run(server, args.rows, replicas, slots // replicas, args.ray_batch, retries)
        assert not ray.is_initialized()
        for name, run in runs.items():
            figures.update({f"{tag}_{name}_{k}": v for k, v in run.items()})
            if name != "kdist" and run["rows_per_s"]:
                figures[f"{tag}_{name}_ratio"] = round(runs["kdist"]["rows_per_s"] / run["rows_per_s"], 2)
        print(f"{tag}: {runs}", file=sys.stderr)
    return figures


def peer_params(args) -> dict:
    from importlib.metadata import version

    return {"rows": args.rows, "latency_s": args.latency, "in_flight": args.concurrency[0], "replicas": args.stage_replicas or 2,
            "fault_rate": args.fault_rate, "faults": "half 429 (Retry-After 1 s), half 503; 1-2 failing attempts a row",
            "ray_batch_size": args.ray_batch, "ray_max_retries": args.ray_max_retries, "ray": version("ray"),
            "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--sequential-rows", type=int, default=50, help="rows timed for the blocking loop")
    parser.add_argument("--backends", nargs="+", default=["openai", "azure"], choices=sorted(BACKENDS))
    parser.add_argument("--stage-replicas", type=int, default=2, help="generate stage: actors (0: skip)")
    parser.add_argument("--peers", nargs="*", default=[], choices=["ray_data_llm"], help="also measure these (issue 19)")
    parser.add_argument("--peers-only", action="store_true", help="skip kdist's own comparisons above")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="peers: share of rows with transient faults")
    parser.add_argument("--ray-max-retries", type=int, nargs="+", default=[0, 3], help="peers: Ray Data LLM's max_retries")
    parser.add_argument("--ray-batch", type=int, default=4, help="peers: Ray Data LLM's batch_size (fastest of 1/4 here)")
    args = parser.parse_args()
    os.environ.setdefault("KDIST_BENCH_KEY", "bench")
    if args.peers_only:
        peers = peer_figures(args)
        print(json.dumps({"benchmark": "teacher_fanout", "figures": peers, "params": peer_params(args)}))
        return

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
    if args.peers:
        figures.update(peer_figures(args))
    params = {
        **(peer_params(args) if args.peers else {}),
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
