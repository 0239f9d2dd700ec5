"""Model endpoints: the one typed config used wherever a model is named.

A teacher, a judge, an evaluated model or a question writer is an endpoint of one `kind`, each
kind with only its own fields, plus sampling:

- `hf`: local transformers (small models, tests, the offline demo);
- `openai`: any OpenAI-compatible chat API (OpenAI, Azure OpenAI with `api_version`, a vLLM
  server, a gateway);
- `azure`: Azure AI model inference through `azure-ai-inference`;
- `openai_batch`: the OpenAI (or Azure OpenAI) Batch API, at about half the price in 24 h;
- `vllm`: vLLM engines inside the Ray cluster through `ray.data.llm`.

A role (teacher, ...) adds its own fields to every kind with `endpoint_union(role)`, so a
config stays flat (`teacher: {kind: openai, model: ..., endpoint: ..., splits: [...]}`) and a
field of another kind is an error that names the field and the kind (kdist.config).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class SamplingSection(Section):
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=16, ge=1)
    # Top-k logprobs per generated token, stored for logit-level KD (None: not requested).
    top_logprobs: int | None = Field(default=None, ge=1, le=20)


class PriceSection(Section):
    """What a paid endpoint charges, for the run summary's cost estimate."""

    input_per_million_tokens: float = Field(ge=0.0)
    output_per_million_tokens: float = Field(ge=0.0)
    currency: str = "USD"

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """What these tokens cost, in `currency`."""
        return (prompt_tokens * self.input_per_million_tokens + completion_tokens * self.output_per_million_tokens) / 1e6


class Endpoint(Section):
    """What every kind has: the model, how it samples, and how the fan-out is cut."""

    kind: str
    model: str = Field(description="local model dir, HF model id, or the deployment/model name")
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    batch_size: int = Field(default=32, ge=1, description="rows per batch handed to a worker")
    replicas: int = Field(default=1, ge=1, description="workers (actors or engines) in the cluster")

    @property
    def label(self) -> str:
        """`kind:model`, stored with every answer."""
        return f"{self.kind}:{self.model}"


class HFEndpoint(Endpoint):
    kind: Literal["hf"] = "hf"


class RemoteEndpoint(Endpoint):
    """An HTTP endpoint: client-side limits, retries and the key's environment variable."""

    endpoint: str = Field(description="base URL of the API")
    # Name of the environment variable that holds the API key; the key itself never goes here.
    api_key_env: str | None = None
    concurrency: int = Field(default=8, ge=1, description="requests in flight per worker")
    # Budgets for the whole run (split across replicas), retries of transient failures, and
    # the per-attempt timeout.
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_attempts: int = Field(default=6, ge=1)
    timeout_s: float = Field(default=60.0, gt=0.0)
    backoff_initial_s: float = Field(default=0.5, gt=0.0)
    backoff_max_s: float = Field(default=30.0, gt=0.0)
    # Extra request body fields passed through as is (OpenAI extra_body, Azure model_extras),
    # e.g. {return_tokens_as_token_ids: true} for vLLM servers when storing top-k logprobs.
    request_extras: dict[str, Any] = Field(default_factory=dict)
    prices: PriceSection | None = None
    api_version: str | None = None

    @field_validator("api_version", mode="before")
    @classmethod
    def _version_as_written(cls, value: Any) -> Any:
        return _date_as_text(value)


class OpenAIEndpoint(RemoteEndpoint):
    """`api_version` set: Azure OpenAI (the endpoint is the resource URL, the model the
    deployment name)."""

    kind: Literal["openai"] = "openai"


class AzureEndpoint(RemoteEndpoint):
    """`api_version` unset: the azure-ai-inference client's default."""

    kind: Literal["azure"] = "azure"


class OpenAIBatchEndpoint(RemoteEndpoint):
    """The OpenAI Batch API (or, with `api_version`, an Azure OpenAI batch deployment): the
    requests go up as JSONL files, answers come back within the 24-hour window at about half
    the price (`prices` are the batch prices). A driver-side orchestrator (kdist.llm.openai_batch)
    runs it; `concurrency` and the rate limits do not apply."""

    kind: Literal["openai_batch"] = "openai_batch"
    # The provider's limits per batch (OpenAI: 50,000 requests and a 200 MB input file;
    # Azure: 100,000 and 200 MB); larger runs are split into several batches.
    batch_max_requests: int = Field(default=50_000, ge=1)
    batch_max_bytes: int = Field(default=200_000_000, ge=1024)
    # Polling: the first wait, doubling up to the last (a batch takes minutes to hours).
    poll_initial_s: float = Field(default=30.0, gt=0.0)
    poll_max_s: float = Field(default=600.0, gt=0.0)
    # How often the rows of an expired or failed batch are submitted again, in a new batch.
    max_resubmits: int = Field(default=3, ge=0)


class VLLMEndpoint(Endpoint):
    kind: Literal["vllm"] = "vllm"
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs per engine replica")
    # Extra vLLM engine arguments (max_model_len, enable_prefix_caching, dtype...).
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


ENDPOINT_KINDS: tuple[type[Endpoint], ...] = (HFEndpoint, OpenAIEndpoint, AzureEndpoint, OpenAIBatchEndpoint, VLLMEndpoint)


def kind_of(model: type[BaseModel]) -> str:
    """The `kind` tag of one union member, read from its Literal annotation."""
    return get_args(model.model_fields["kind"].annotation)[0]


def kind_for_field(field: str) -> list[str]:
    """The endpoint kinds that have `field` (for errors about a field of another kind)."""
    return [kind_of(kind) for kind in ENDPOINT_KINDS if field in kind.model_fields]


def endpoint_union(role: type[Section] | None = None, name: str = "", extra: tuple[type[Section], ...] = ()) -> Any:
    """A discriminated union over every endpoint kind, each extended by the role's fields,
    plus `extra` members that are no endpoint (the rule judge)."""
    if role is None:
        members = ENDPOINT_KINDS
    else:
        members = tuple(
            create_model(f"{kind.__name__.removesuffix('Endpoint')}{name or role.__name__}", __base__=(kind, role))
            for kind in ENDPOINT_KINDS
        )
    return Annotated[Union[(*members, *extra)], Field(discriminator="kind")]  # noqa: UP007 - runtime union of classes


def _date_as_text(value: Any) -> Any:
    # An unquoted `api_version: 2024-10-21` is a date to YAML; the user meant the string.
    import datetime

    return value.isoformat() if isinstance(value, datetime.date) else value
