"""Fixtures for the teacher backend tests: the fake endpoint and a tiny offline model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kdist.llm.base import ChatRequest, request_hash
from kdist.testing.llm_server import LLMServer, ServerSettings


@pytest.fixture
def llm_server() -> Iterator[LLMServer]:
    """A fault-free server; tests that need faults start their own with LLMServer(settings)."""
    with LLMServer(ServerSettings()) as server:
        yield server


def mc_requests(count: int, model: str = "m", start: int = 0) -> list[ChatRequest]:
    """Distinct multiple-choice chat requests (three labelled choices each)."""
    requests = []
    for i in range(start, start + count):
        messages = [{"role": "user", "content": f"Question {i}: pick one. A) red B) green C) blue Answer with the letter only."}]
        requests.append(ChatRequest(id=f"row-{i}", messages=messages, request_hash=request_hash(model, messages, {})))
    return requests


@pytest.fixture
def make_requests():
    return mc_requests


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Llama with a locally trained tokenizer (no hub)."""
    from kdist.config import ModelBuildSection
    from kdist.modelkit import build_llama, train_tokenizer

    out = tmp_path_factory.mktemp("tiny-teacher")
    texts = [f"Question {i}: pick one. A) red B) green C) blue Answer with the letter only." for i in range(200)]
    tokenizer = train_tokenizer(texts, vocab_size=400, out_dir=out)
    # head_dim 64: vLLM's CPU attention has no kernel for small head dims such as 16.
    build_llama(ModelBuildSection(hidden_size=128, num_layers=2, num_heads=2), tokenizer, out, seed=0)
    return out
