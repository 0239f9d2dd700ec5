"""The loopback server's files routes, driven by the official openai client (OpenAI and
Azure OpenAI paths)."""

from __future__ import annotations

import httpx
import openai
import pytest

from kdist.testing.llm_server import LLMServer, ServerSettings


@pytest.fixture
def server():
    with LLMServer(ServerSettings(api_key="sk-test", max_file_bytes=1000)) as running:
        yield running


def _clients(server: LLMServer) -> list[openai.OpenAI]:
    return [
        openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0),
        openai.AzureOpenAI(azure_endpoint=server.base_url, api_version="2025-03-01-preview", api_key="sk-test", max_retries=0),
    ]


def test_upload_retrieve_download_list_delete_on_both_paths(server):
    for client in _clients(server):
        content = b'{"custom_id": "a"}\n{"custom_id": "b"}\n'
        uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
        assert uploaded.bytes == len(content) and uploaded.purpose == "batch" and uploaded.status == "processed"
        assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
        assert client.files.content(uploaded.id).read() == content
        assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]
        assert client.files.delete(uploaded.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(uploaded.id)
    stats = server.stats()["files"]
    assert (stats["uploads"], stats["downloads"], stats["deletes"]) == (2, 2, 2)


def test_too_large_an_upload_is_refused_and_not_stored(server):
    client = _clients(server)[0]
    with pytest.raises(openai.BadRequestError, match="too large"):
        client.files.create(file=("big.jsonl", b"x" * 1001), purpose="batch")
    assert server.stats()["files"]["uploads"] == 0


def test_a_wrong_key_and_a_missing_api_version_are_refused(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.openai_base_url, api_key="wrong", max_retries=0).files.list()
    reply = httpx.get(server.base_url + "/openai/files", headers={"api-key": "sk-test"})
    assert reply.status_code == 400 and "api-version" in reply.json()["error"]["message"]
