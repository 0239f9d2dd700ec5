"""`openai` backend: any OpenAI-compatible chat endpoint through the official `openai` client.

OpenAI itself, a vLLM server, gateways; with `api_version` set, Azure OpenAI (the endpoint is
the resource URL and `model` the deployment name), keyed by `api_key_env` or, without one, by
an Entra ID token from DefaultAzureCredential.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from kdist.config import TeacherSection
from kdist.teachers.base import ChatRequest, TeacherResponse
from kdist.teachers.remote import RemoteTeacher, sampling_params, top_logprobs_from_openai
from kdist.teachers.resilience import CONNECTION, CONTENT_FILTER, MALFORMED, TIMEOUT, RequestFailed, failure_for_status

_AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"


class OpenAITeacher(RemoteTeacher):
    kind = "openai"

    def __init__(self, section: TeacherSection) -> None:
        super().__init__(section)
        self._body = self._request_body(section)

    @staticmethod
    def _request_body(section: TeacherSection) -> dict[str, Any]:
        body: dict[str, Any] = {"model": section.model, **sampling_params(section)}
        if section.sampling.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = section.sampling.top_logprobs
        # Extras go into the body as is (the raw post has no extra_body parameter).
        body.update(section.request_extras)
        return body

    async def _open(self) -> None:
        section = self.section
        # The SDK's own retries are off: attempts are counted and paced by resilience.py.
        # aiohttp as the transport: the default httpx pool costs about 4 ms of CPU a request
        # at 64 connections (it scans every connection per request), aiohttp about 1 ms.
        http_client = openai.DefaultAioHttpClient(
            limits=httpx2.Limits(max_connections=section.concurrency, max_keepalive_connections=section.concurrency),
            timeout=section.timeout_s,
        )
        common: dict[str, Any] = {"max_retries": 0, "timeout": section.timeout_s, "http_client": http_client}
        if section.api_version:
            self._client = openai.AsyncAzureOpenAI(
                azure_endpoint=section.endpoint,
                api_version=section.api_version,
                api_key=self._api_key,
                azure_ad_token_provider=None if self._api_key else self._entra_token_provider(),
                **common,
            )
        else:
            # Servers without auth (a local vLLM) still need a non-empty key in the client.
            self._client = openai.AsyncOpenAI(base_url=section.endpoint, api_key=self._api_key or "none", **common)

    def _entra_token_provider(self) -> Any:
        from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

        self._credential = DefaultAzureCredential()
        return get_bearer_token_provider(self._credential, _AZURE_SCOPE)

    async def _complete(self, request: ChatRequest) -> TeacherResponse:
        assert self._client is not None
        try:
            # The documented raw `post` skips the SDK's per-call parameter transform and model
            # construction (about half its CPU per request); auth, base URL, Azure routing and
            # typed HTTP errors still come from the SDK.
            reply = await self._client.post(
                "/chat/completions", body={"messages": request.messages, **self._body}, cast_to=httpx2.Response
            )
            completion = reply.json()
            choice = completion["choices"][0]
            text = choice["message"]["content"]
        except openai.APIStatusError as err:
            code = _error_code(err.body)
            raise failure_for_status(err.status_code, code, err.response.headers, err.message) from None
        except openai.APITimeoutError:
            raise RequestFailed(TIMEOUT, transient=True) from None
        except openai.APIConnectionError as err:
            raise RequestFailed(CONNECTION, transient=True, detail=str(err.__cause__ or err)) from None
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise RequestFailed(MALFORMED, transient=True, status=200, detail=type(err).__name__) from None
        if choice.get("finish_reason") == "content_filter":
            raise RequestFailed(CONTENT_FILTER, transient=False, status=200, detail="the answer was filtered")
        usage = completion.get("usage") or {}
        return TeacherResponse(
            id=request.id,
            request_hash=request.request_hash,
            teacher=self.name,
            response=text or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            top_logprobs=top_logprobs_from_openai((choice.get("logprobs") or {}).get("content")),
            status=reply.status_code,
        )


def _error_code(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("code") or inner.get("type") or "") or None
    return None
