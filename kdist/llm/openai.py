"""`openai` backend: any OpenAI-compatible chat endpoint through the official `openai` client.

OpenAI itself, a vLLM server, gateways; with `api_version` set, Azure OpenAI (the endpoint is
the resource URL and `model` the deployment name), keyed by `api_key_env` or, without one, by
an Entra ID token from DefaultAzureCredential.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from kdist.endpoints import RemoteEndpoint
from kdist.errors import UsageError
from kdist.llm.base import ChatRequest, ModelResponse
from kdist.llm.remote import RemoteBackend, connection_failure, sampling_params, top_logprobs_from_openai
from kdist.llm.resilience import CONNECTION, CONTENT_FILTER, MALFORMED, TIMEOUT, RequestFailed, failure_for_status

_AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"


class OpenAIBackend(RemoteBackend):
    kind = "openai"

    def __init__(self, endpoint: RemoteEndpoint) -> None:
        super().__init__(endpoint)
        self._body = request_body(endpoint)

    async def _open(self) -> None:
        endpoint = self.endpoint
        # The SDK's own retries are off: attempts are counted and paced by resilience.py.
        # aiohttp as the transport: the default httpx pool costs about 4 ms of CPU a request
        # at 64 connections (it scans every connection per request), aiohttp about 1 ms.
        http_client = openai.DefaultAioHttpClient(
            limits=httpx2.Limits(max_connections=endpoint.concurrency, max_keepalive_connections=endpoint.concurrency),
            timeout=endpoint.timeout_s,
        )
        common: dict[str, Any] = {"max_retries": 0, "timeout": endpoint.timeout_s, "http_client": http_client}
        if endpoint.api_version:
            self._client = openai.AsyncAzureOpenAI(
                azure_endpoint=endpoint.endpoint,
                api_version=endpoint.api_version,
                api_key=self._api_key,
                azure_ad_token_provider=None if self._api_key else self._entra_token_provider(),
                **common,
            )
        else:
            # Servers without auth (a local vLLM) still need a non-empty key in the client.
            self._client = openai.AsyncOpenAI(base_url=endpoint.endpoint, api_key=self._api_key or "none", **common)

    def _entra_token_provider(self) -> Any:
        from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

        self._credential = DefaultAzureCredential()
        return get_bearer_token_provider(self._credential, _AZURE_SCOPE)

    async def _complete(self, request: ChatRequest) -> ModelResponse:
        assert self._client is not None
        try:
            # The documented raw `post` skips the SDK's per-call parameter transform and model
            # construction (about half its CPU per request); auth, base URL, Azure routing and
            # typed HTTP errors still come from the SDK.
            reply = await self._client.post(
                "/chat/completions", body={"messages": request.messages, **self._body}, cast_to=httpx2.Response
            )
            return response_from_completion(reply.json(), request, self.name, reply.status_code)
        except openai.APIStatusError as err:
            code = _error_code(err.body)
            raise failure_for_status(err.status_code, code, err.response.headers, err.message) from None
        except openai.APIConnectionError as err:  # APITimeoutError included
            # The aiohttp transport reports a refused connection as a connect timeout.
            if failure := connection_failure(err, self.endpoint.endpoint):
                raise failure from None
            if isinstance(err, openai.APITimeoutError):
                raise RequestFailed(TIMEOUT, transient=True) from None
            raise RequestFailed(CONNECTION, transient=True, detail=str(err.__cause__ or err)) from None
        except ValueError as err:  # the body is not JSON
            raise RequestFailed(MALFORMED, transient=True, status=200, detail=type(err).__name__) from None


def request_body(endpoint: RemoteEndpoint) -> dict[str, Any]:
    """Every field of a chat request but its messages (also each line of a batch's input)."""
    body: dict[str, Any] = {"model": endpoint.model, **sampling_params(endpoint)}
    if endpoint.sampling.top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = endpoint.sampling.top_logprobs
    # Extras go into the body as is (the raw post has no extra_body parameter).
    body.update(endpoint.request_extras)
    return body


def response_from_completion(completion: dict[str, Any], request: ChatRequest, model: str, status: int) -> ModelResponse:
    """A chat completion body as the request's response (the synchronous reply, or one line
    of a batch's output file: both are read the same way, so both store the same columns)."""
    try:
        choice = completion["choices"][0]
        text = choice["message"]["content"]
        usage = completion.get("usage") or {}
        prompt_tokens, completion_tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise RequestFailed(MALFORMED, transient=True, status=200, detail=type(err).__name__) from None
    if choice.get("finish_reason") == "content_filter":
        raise RequestFailed(CONTENT_FILTER, transient=False, status=200, detail="the answer was filtered")
    return ModelResponse(
        id=request.id,
        request_hash=request.request_hash, candidate=request.candidate,
        model=model,
        response=text or "",
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        top_logprobs=top_logprobs_from_openai((choice.get("logprobs") or {}).get("content"), text),
        status=status,
    )


def sync_client(settings: Any, key: str | None) -> openai.OpenAI:
    """A blocking client for the driver-side APIs (files, batches, fine-tuning jobs):
    `settings` has endpoint, api_version (Azure OpenAI when set), max_attempts, timeout_s.
    The client's own retries (backoff, Retry-After) serve these few calls; without a key on
    Azure, an Entra ID token."""
    common: dict[str, Any] = {"max_retries": settings.max_attempts - 1, "timeout": settings.timeout_s}
    if settings.api_version is None:
        return openai.OpenAI(base_url=settings.endpoint, api_key=key or "none", **common)
    provider = None
    if key is None:
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider

        provider = get_bearer_token_provider(DefaultAzureCredential(), _AZURE_SCOPE)
    return openai.AzureOpenAI(
        azure_endpoint=settings.endpoint, api_version=settings.api_version, api_key=key, azure_ad_token_provider=provider, **common
    )


def call_api(call: Any, what: str, where: str, scrub: Any) -> Any:
    """One SDK call; what the client's retries could not cure is one UsageError line naming
    the API (`what`) and the endpoint, scrubbed of secrets."""
    try:
        return call()
    except openai.APIStatusError as err:
        raise UsageError(f"{what} at {scrub(where)}: {err.status_code} {scrub(err.message, 200)}") from None
    except openai.APIConnectionError as err:
        raise UsageError(f"{what} at {scrub(where)} cannot be reached: {scrub(str(err), 200)}") from None


def _error_code(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("code") or inner.get("type") or "") or None
    return None
