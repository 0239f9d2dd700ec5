"""Model backends, one kind per module (hf, openai, azure, vllm, openai_batch), and the one
batch-inference function every model role uses (kdist.llm.batch): the teacher, the judge,
evaluated models.
"""

from __future__ import annotations

from kdist.endpoints import Endpoint
from kdist.llm.base import Backend


def build_backend(endpoint: Endpoint) -> Backend:
    """The per-batch backend of an hf, openai or azure endpoint, ready to answer requests.

    `vllm` is dataset-level (kdist.llm.vllm.VLLMBackend.transform): the batch-inference layer
    appends its stages to the dataset instead of building it per worker.
    """
    if endpoint.kind == "hf":
        from kdist.llm.hf import HFBackend

        return HFBackend(endpoint)  # type: ignore[arg-type]
    if endpoint.kind == "openai":
        from kdist.llm.openai import OpenAIBackend

        return OpenAIBackend(endpoint)  # type: ignore[arg-type]
    if endpoint.kind == "azure":
        from kdist.llm.azure import AzureBackend

        return AzureBackend(endpoint)  # type: ignore[arg-type]
    raise ValueError(
        f"kind '{endpoint.kind}' has no per-batch backend (vllm runs as a dataset stage, openai_batch from the driver)"
    )
