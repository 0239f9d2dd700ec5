"""The loopback server's Files API: upload, list, retrieve, download, delete.

The routes OpenAI serves under `/v1/files` and Azure OpenAI under `/openai/files`
(api-version required), with the same objects (`id`, `object: "file"`, `bytes`, `created_at`,
`filename`, `purpose`, `status`). Files live in memory for the server's lifetime. The routes
that consume files (batches, fine-tuning jobs) reach the same store through
`request.app[FILES]` and add their result files with `FileStore.add`.

`max_bytes` mirrors the provider's upload limit (OpenAI: 512 MB a file, 200 MB for a batch
input): a larger upload is refused with a 400, as the real service does.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kdist.testing.api_common import PREFIXES, error, guarded


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def as_object(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at,
            "filename": self.filename, "purpose": self.purpose, "status": "processed",
            "expires_at": None, "status_details": None,
        }  # fmt: skip


class FileStore:
    """The server's files, and counts of what clients did with them (for tests)."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.files: dict[str, StoredFile] = {}
        self.counts: Counter[str] = Counter()  # uploads, downloads, deletes

    def add(self, content: bytes, filename: str, purpose: str) -> StoredFile:
        stored = StoredFile("file-" + uuid.uuid4().hex[:24], filename, purpose, content, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        return self.files.get(file_id)

    def snapshot(self) -> dict[str, Any]:
        return {
            "uploads": self.counts["uploads"], "downloads": self.counts["downloads"], "deletes": self.counts["deletes"],
            "by_purpose": dict(Counter(f.purpose for f in self.files.values())),
        }  # fmt: skip


FILES = web.AppKey("kdist_files", FileStore)


def missing(file_id: str) -> web.Response:
    return error(404, "not_found", f"No such File object: {file_id}")


def register(app: web.Application, api_key: str | None, max_bytes: int | None = None) -> FileStore:
    """Add the files routes (OpenAI and Azure paths) to `app`; the store they share."""
    store = FileStore(max_bytes)
    app[FILES] = store

    @guarded(api_key)
    async def upload(request: web.Request) -> web.Response:
        form = await request.post()
        field, purpose = form.get("file"), form.get("purpose")
        if not isinstance(field, web.FileField) or not isinstance(purpose, str) or not purpose:
            return error(400, "invalid_request_error", "a multipart body with 'file' and 'purpose' is required")
        content = field.file.read()
        if store.max_bytes is not None and len(content) > store.max_bytes:
            return error(400, "invalid_request_error", f"File is too large: {len(content)} bytes, the limit is {store.max_bytes}")
        store.counts["uploads"] += 1
        return web.json_response(store.add(content, field.filename or "upload", purpose).as_object())

    @guarded(api_key)
    async def listing(request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        data = [f.as_object() for f in store.files.values() if purpose in (None, f.purpose)]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    @guarded(api_key)
    async def retrieve(request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        stored = store.get(file_id)
        return web.json_response(stored.as_object()) if stored else missing(file_id)

    @guarded(api_key)
    async def content(request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        stored = store.get(file_id)
        if stored is None:
            return missing(file_id)
        store.counts["downloads"] += 1
        return web.Response(body=stored.content, content_type="application/octet-stream")

    @guarded(api_key)
    async def delete(request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if store.files.pop(file_id, None) is None:
            return missing(file_id)
        store.counts["deletes"] += 1
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    for prefix in PREFIXES:
        app.router.add_post(f"{prefix}/files", upload)
        app.router.add_get(f"{prefix}/files", listing)
        app.router.add_get(f"{prefix}/files/{{file_id}}", retrieve)
        app.router.add_get(f"{prefix}/files/{{file_id}}/content", content)
        app.router.add_delete(f"{prefix}/files/{{file_id}}", delete)
    return store
