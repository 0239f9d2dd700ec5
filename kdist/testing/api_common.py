"""What every route of the loopback server checks the same way: the key a client presents,
Azure's api-version query parameter, and the error body both APIs answer with.

OpenAI routes live under `/v1`, Azure OpenAI routes under `/openai` (what `AzureOpenAI`
sends for files, batches and fine-tuning jobs: `{endpoint}/openai/files?api-version=...`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPENAI_PREFIX = "/v1"
AZURE_PREFIX = "/openai"
PREFIXES = (OPENAI_PREFIX, AZURE_PREFIX)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "status": status}}
    return web.json_response(body, status=status, headers=headers)


def presented_key(request: web.Request) -> str | None:
    """The key of a request: `Authorization: Bearer KEY` (OpenAI) or `api-key` (Azure)."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:]
    return request.headers.get("api-key")


def refusal(request: web.Request, api_key: str | None) -> web.Response | None:
    """The error a real service answers before looking at the body (no api-version on an
    Azure route, a wrong key), or None when the request may go on."""
    if request.path.startswith(AZURE_PREFIX + "/") and "api-version" not in request.query:
        return error(400, "missing_api_version", "the api-version query parameter is required")
    if api_key and presented_key(request) != api_key:
        return error(401, "401", "Access denied due to invalid subscription key.")
    return None


def guarded(api_key: str | None) -> Callable[[Handler], Handler]:
    """A route handler that first answers `refusal`'s error, when there is one."""

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            return refusal(request, api_key) or await handler(request)

        return checked

    return wrap
