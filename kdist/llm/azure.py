"""`azure` backend: Azure AI model inference through `azure-ai-inference`'s async
ChatCompletionsClient (Azure AI Foundry models, serverless and managed endpoints, and any
server that speaks the same protocol, such as vLLM's).

Auth: the key in the environment variable named by `api_key_env`, or without one an Entra ID
token from DefaultAzureCredential (workload identity on AKS, managed identity, az login);
azure-core sends bearer tokens only over https, so plain-http servers need a key.
`model_extras` carries what the typed API lacks (logprobs, request_extras) to the model.
"""

from __future__ import annotations

from typing import Any

from azure.ai.inference.aio import ChatCompletionsClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from kdist.llm.base import ChatRequest, ModelResponse
from kdist.llm.remote import RemoteBackend, connection_failure, top_logprobs_from_openai
from kdist.llm.resilience import CONNECTION, CONTENT_FILTER, MALFORMED, TIMEOUT, RequestFailed, failure_for_status

_DEFAULT_API_VERSION = "2024-05-01-preview"


class AzureBackend(RemoteBackend):
    kind = "azure"

    def _model_extras(self) -> dict[str, Any] | None:
        extras: dict[str, Any] = dict(self.endpoint.request_extras)
        if self.endpoint.sampling.top_logprobs:
            extras.update(logprobs=True, top_logprobs=self.endpoint.sampling.top_logprobs)
        return extras or None

    async def _open(self) -> None:
        endpoint = self.endpoint
        if self._api_key:
            credential: Any = AzureKeyCredential(self._api_key)
        else:
            from azure.identity.aio import DefaultAzureCredential

            credential = self._credential = DefaultAzureCredential()
        sampling = endpoint.sampling
        # retry_total=0: the SDK's retry policy is off; resilience.py counts and paces attempts.
        self._client = ChatCompletionsClient(
            endpoint=endpoint.endpoint,
            credential=credential,
            api_version=endpoint.api_version or _DEFAULT_API_VERSION,
            model=endpoint.model,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            model_extras=self._model_extras(),
            retry_total=0,
            connection_timeout=endpoint.timeout_s,
            read_timeout=endpoint.timeout_s,
        )

    async def _complete(self, request: ChatRequest) -> ModelResponse:
        assert self._client is not None
        try:
            result = await self._client.complete(messages=request.messages)
        except DecodeError as err:
            raise RequestFailed(MALFORMED, transient=True, status=200, detail=str(err)[:120]) from None
        except HttpResponseError as err:
            status = err.status_code or 0
            headers = err.response.headers if err.response is not None else {}
            code = err.error.code if err.error is not None else None
            raise failure_for_status(status, code, headers, err.message or "") from None
        except ServiceResponseTimeoutError:
            raise RequestFailed(TIMEOUT, transient=True) from None
        except (ServiceRequestError, ServiceResponseError) as err:
            if failure := connection_failure(err, self.endpoint.endpoint):
                raise failure from None
            raise RequestFailed(CONNECTION, transient=True, detail=f"{type(err).__name__}: {err}") from None
        if not result.choices:
            raise RequestFailed(MALFORMED, transient=True, status=200, detail="no choices")
        choice = result.choices[0]
        finish = str(choice.finish_reason.value if hasattr(choice.finish_reason, "value") else choice.finish_reason)
        if finish == "content_filter":
            raise RequestFailed(CONTENT_FILTER, transient=False, status=200, detail="the answer was filtered")
        logprobs = (choice.get("logprobs") or {}).get("content")
        usage = result.usage
        return ModelResponse(
            id=request.id,
            request_hash=request.request_hash, candidate=request.candidate,
            model=self.name,
            response=choice.message.content or "",
            finish_reason=finish,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            top_logprobs=top_logprobs_from_openai(logprobs, choice.message.content),
            status=200,
        )
