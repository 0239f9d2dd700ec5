"""`vllm` backend: a model served by vLLM engines inside the Ray cluster, through ray.data.llm.

Unlike the HTTP backends this one is dataset-level: `transform(dataset)` appends vLLM's stages
(chat template, tokenize, engine, detokenize) to a Ray Dataset of prompt rows and returns a
Dataset of response rows, so Ray Data batches requests into the engines (continuous batching)
and runs `replicas` engines of `tensor_parallel_size` GPUs each. On CPU-only clusters the same
code runs on vLLM's CPU build with one CPU bundle per engine.

Input rows need `id`, `candidate`, `request_hash` and `messages`; output rows are ModelResponse
rows. A row that the engine fails on comes back as an error row (should_continue_on_error),
never a crash.
"""

from __future__ import annotations

import os
from typing import Any

from kdist.endpoints import VLLMEndpoint
from kdist.runtime import SIDE_STAGE_CPUS, cluster_has_gpus

# vLLM-on-CPU settings for the engine actors: a 1 GiB KV cache, loopback only, and the engine
# in-process (about 2 s to start instead of 34 s with its own process).
CPU_ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


# Request columns that ride along through the engine stages (the key of each answer).
CARRIED_COLUMNS = ("id", "candidate", "request_hash")


class VLLMBackend:
    kind = "vllm"

    def __init__(self, endpoint: VLLMEndpoint, use_gpu: bool | None = None) -> None:
        self.endpoint = endpoint
        self.name = endpoint.label
        self._use_gpu = use_gpu

    def transform(self, dataset: Any) -> Any:
        """Prompt rows (id, request_hash, messages) -> ModelResponse rows, lazily."""
        from ray.data.llm import build_processor

        side = {"num_cpus": SIDE_STAGE_CPUS}
        processor = build_processor(
            self.processor_config(),
            preprocess=_Preprocess(self._sampling_params()),
            postprocess=_Postprocess(self.name, self.endpoint.sampling.max_tokens, self.endpoint.sampling.top_logprobs),
            preprocess_map_kwargs=side,
            postprocess_map_kwargs=side,
        )
        return processor(dataset)

    def processor_config(self) -> Any:
        from ray.data.llm import vLLMEngineProcessorConfig

        from kdist.llm.models import local_model

        endpoint = self.endpoint
        use_gpu = cluster_has_gpus() if self._use_gpu is None else self._use_gpu
        bundle = {"GPU": 1} if use_gpu else {"CPU": 1}
        env = {} if use_gpu else {k: os.environ.get(k, v) for k, v in CPU_ENGINE_ENV.items()}
        side = {"num_cpus": SIDE_STAGE_CPUS}
        return vLLMEngineProcessorConfig(
            model_source=local_model(endpoint.model),
            engine_kwargs={
                "tensor_parallel_size": endpoint.tensor_parallel_size,
                "max_logprobs": max(20, endpoint.sampling.top_logprobs or 0),
                **endpoint.engine_kwargs,
            },
            concurrency=endpoint.replicas,
            batch_size=endpoint.batch_size,
            placement_group_config={"bundles": [bundle] * endpoint.tensor_parallel_size},
            runtime_env={"env_vars": env} if env else None,
            log_engine_metrics=False,
            should_continue_on_error=True,
            chat_template_stage={"enabled": True, **side},
            tokenize_stage={"enabled": True, **side},
            detokenize_stage={"enabled": True, **side},
        )

    def _sampling_params(self) -> dict[str, Any]:
        sampling = self.endpoint.sampling
        params: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.top_logprobs:
            params["logprobs"] = sampling.top_logprobs
        return params

    def close(self) -> None:
        """Engines belong to the Ray Data pipeline and end with it."""


class _Preprocess:
    def __init__(self, sampling_params: dict[str, Any]) -> None:
        self.sampling_params = sampling_params

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        carried = {name: row[name] for name in CARRIED_COLUMNS if name in row}
        return {**carried, "messages": messages, "sampling_params": self.sampling_params}


class _Postprocess:
    def __init__(self, model: str, max_tokens: int, top_k: int | None) -> None:
        self.model, self.max_tokens, self.top_k = model, max_tokens, top_k

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        error = row.get("__inference_error__") or None
        generated = int(row.get("num_generated_tokens") or 0)
        return {
            **{name: row[name] for name in CARRIED_COLUMNS if name in row},
            "model": self.model,
            "response": None if error else row.get("generated_text", ""),
            # ray.data.llm does not pass vLLM's finish reason on; a full budget means it was cut.
            "finish_reason": None if error else ("length" if generated >= self.max_tokens else "stop"),
            "prompt_tokens": int(row.get("num_input_tokens") or 0),
            "completion_tokens": generated,
            "top_logprobs": None if error or not self.top_k else top_logprobs_from_vllm(row.get("logprobs"), self.top_k),
            "error": f"engine_error: {error}"[:300] if error else None,
            "status": None,
            "attempts": 1,
            # the engine's own time for this request (ray.data.llm sets -1 on an error)
            "seconds": _seconds(row.get("time_taken_llm")),
        }


def _seconds(value: Any) -> float | None:
    return round(float(value), 4) if isinstance(value, int | float) and value >= 0 else None


def top_logprobs_from_vllm(steps: Any, k: int) -> list[dict[str, list[Any]]] | None:
    """vLLM's per-token {token_id: {logprob, rank, ...}} -> [{"token_ids", "logprobs"}], top k.

    vLLM adds the sampled token when it is outside the top k; sorting and cutting at k keeps
    the stored form the same for every backend.
    """
    if steps is None:
        return None
    out = []
    for step in steps:
        items = [(int(token), float(info["logprob"])) for token, info in _items(step) if info is not None]
        items.sort(key=lambda pair: -pair[1])
        out.append({"token_ids": [t for t, _ in items[:k]], "logprobs": [v for _, v in items[:k]]})
    return out


def _items(step: Any) -> list[tuple[Any, Any]]:
    # Through Arrow, a dict keyed by token id may come back as a dict or as a struct-like dict
    # with string keys; both iterate as (token, info).
    return list(step.items()) if hasattr(step, "items") else []
