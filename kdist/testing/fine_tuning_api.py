"""The loopback server's fine-tuning API: create, retrieve, list, events and cancel jobs.

The routes OpenAI serves under `/v1/fine_tuning/jobs` and Azure OpenAI under
`/openai/fine_tuning/jobs`. A job reads its training (and validation) file from the files
routes (kdist.testing.files_api): the file must exist, have purpose `fine-tune` and hold one
`{"messages": [...]}` object a line, else the job fails validation with an `error` object,
as the real service fails it. Then it moves through its statuses on the clock, one `phase_s`
each, as a real job does over an hour:

    validating_files -> queued -> running -> succeeded (fine_tuned_model, trained_tokens)

The first `fail_first` jobs end `failed` after running, with `fail_message` as their error.
Statuses and events are computed when a job is read, so a job progresses whether or not a
client polls it. A succeeded job's `fine_tuned_model` answers chat completions on the same
server; any other `ft:` model name is unknown there (404), as on the real service.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kdist.testing.api_common import PREFIXES, error, refusal
from kdist.testing.files_api import FILES, FileStore

PHASES = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
FT_PREFIX = "ft:"


@dataclass
class FineTuningSettings:
    phase_s: float = 0.2  # seconds in each of validating_files, queued, running
    fail_first: int = 0  # the first N jobs created fail while training
    fail_message: str = "Training failed: the loss diverged."


@dataclass
class _Job:
    obj: dict[str, Any]
    started: float
    fails: bool
    problem: str | None  # why validation fails, or None
    tokens: int
    cancelled_at: float | None = None


class JobQueue:
    """The server's fine-tuning jobs and counts of what clients did (for tests)."""

    def __init__(self, settings: FineTuningSettings, files: FileStore) -> None:
        self.settings, self.files = settings, files
        self.jobs: dict[str, _Job] = {}
        self.counts: Counter[str] = Counter()  # created, cancelled

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        job_id = "ftjob-" + uuid.uuid4().hex[:24]
        problem, tokens = self._validate(body.get("training_file")), 0
        if problem is None and body.get("validation_file"):
            problem = self._validate(body["validation_file"])
        if problem is None:
            tokens = len(self.files.files[body["training_file"]].content.split())
        hyper = _hyperparameters(body)
        obj = {
            "id": job_id, "object": "fine_tuning.job", "created_at": int(time.time()), "model": body["model"],
            "training_file": body["training_file"], "validation_file": body.get("validation_file"),
            "hyperparameters": hyper, "seed": body.get("seed", 0), "metadata": body.get("metadata"),
            "user_provided_suffix": body.get("suffix"), "status": PHASES[0], "fine_tuned_model": None,
            "trained_tokens": None, "finished_at": None, "error": None, "result_files": [],
            "organization_id": "org-kdist", "integrations": [], "estimated_finish": None,
        }  # fmt: skip
        self.counts["created"] += 1
        self.jobs[job_id] = _Job(obj, time.monotonic(), self.counts["created"] <= self.settings.fail_first, problem, tokens)
        return obj

    def _validate(self, file_id: Any) -> str | None:
        stored = self.files.get(str(file_id))
        if stored is None or stored.purpose != "fine-tune":
            return f"File {file_id} is not a file with purpose fine-tune."
        for number, line in enumerate(stored.content.decode(errors="replace").splitlines(), 1):
            try:
                if not isinstance(json.loads(line).get("messages"), list):
                    raise ValueError
            except (ValueError, AttributeError):
                return f"Invalid file format: line {number} is not a JSON object with 'messages'."
        return None

    def advance(self, job_id: str) -> dict[str, Any] | None:
        """The job as the clock says it is now (None: no such job)."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        obj = job.obj
        if obj["status"] in TERMINAL:
            return obj
        phase = int((time.monotonic() - job.started) / self.settings.phase_s)
        now = int(time.time())
        if job.problem is not None and phase >= 1:
            obj.update(status="failed", finished_at=now, error={"code": "invalid_training_file", "message": job.problem, "param": "training_file"})
        elif phase < len(PHASES):
            obj["status"] = PHASES[phase]
        elif job.fails:
            obj.update(status="failed", finished_at=now, error={"code": "training_failed", "message": self.settings.fail_message, "param": None})
        else:
            suffix = obj["user_provided_suffix"] or "kdist"
            obj.update(status="succeeded", finished_at=now, trained_tokens=job.tokens * obj["hyperparameters"]["n_epochs"],
                       fine_tuned_model=f"{FT_PREFIX}{obj['model']}:kdist:{suffix}:{job_id[-8:]}")  # fmt: skip
        return obj

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events so far, newest first (as the API lists them)."""
        obj = self.advance(job_id) or {}
        status = obj.get("status")
        reached = list(PHASES[: PHASES.index(status) + 1]) if status in PHASES else [*PHASES, status]
        messages = {
            "validating_files": f"Validating training file: {obj.get('training_file')}",
            "queued": "Files validated, moving job to queued state",
            "running": "Fine-tuning job started",
            "succeeded": f"New fine-tuned model created: {obj.get('fine_tuned_model')}",
            "failed": f"Fine-tuning job failed: {(obj.get('error') or {}).get('message')}",
            "cancelled": "Fine-tuning job cancelled",
        }
        events = [
            {"id": f"ftevent-{job_id[-8:]}-{n}", "object": "fine_tuning.job.event", "created_at": obj.get("created_at"),
             "level": "error" if name == "failed" else "info", "message": messages[name], "type": "message", "data": {}}
            for n, name in enumerate(reached)
        ]  # fmt: skip
        return events[::-1]

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        obj = self.advance(job_id)
        if obj is not None and obj["status"] not in TERMINAL:
            obj.update(status="cancelled", finished_at=int(time.time()))
            self.counts["cancelled"] += 1
        return obj

    def knows_model(self, name: str) -> bool:
        """Whether `name` is a model this server serves: not an `ft:` name, or a succeeded
        job's fine-tuned model."""
        if not name.startswith(FT_PREFIX):
            return True
        return any(self.advance(job_id)["fine_tuned_model"] == name for job_id in list(self.jobs))

    def snapshot(self) -> dict[str, Any]:
        return {"created": self.counts["created"], "cancelled": self.counts["cancelled"],
                "statuses": dict(Counter(self.advance(j)["status"] for j in list(self.jobs)))}  # fmt: skip


def _hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    """The job's hyperparameters, from `method.supervised` or the older top-level field;
    the provider picks what is left "auto" (here: fixed values)."""
    given = ((body.get("method") or {}).get("supervised") or {}).get("hyperparameters") or body.get("hyperparameters") or {}
    defaults = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}
    return {name: value if (value := given.get(name, "auto")) != "auto" else default for name, default in defaults.items()}


FINE_TUNING = web.AppKey("kdist_fine_tuning", JobQueue)


def register(app: web.Application, api_key: str | None, settings: FineTuningSettings) -> JobQueue:
    """Add the fine-tuning routes (OpenAI and Azure paths) to `app`, which already has the
    files routes; the queue they share."""
    queue = JobQueue(settings, app[FILES])
    app[FINE_TUNING] = queue

    def missing(job_id: str) -> web.Response:
        return error(404, "not_found", f"No such fine-tuning job: {job_id}")

    async def create(request: web.Request) -> web.Response:
        if refused := refusal(request, api_key):
            return refused
        try:
            body = await request.json()
            if not isinstance(body.get("model"), str) or not isinstance(body.get("training_file"), str):
                raise KeyError
        except (json.JSONDecodeError, KeyError, AttributeError):
            return error(400, "invalid_request_error", "the body must be JSON with 'model' and 'training_file'")
        if queue.files.get(body["training_file"]) is None:
            return error(400, "invalid_request_error", f"invalid training_file: {body['training_file']}")
        return web.json_response(queue.create(body))

    async def listing(request: web.Request) -> web.Response:
        if refused := refusal(request, api_key):
            return refused
        wanted = {k[len("metadata["):-1]: v for k, v in request.query.items() if k.startswith("metadata[")}
        jobs = [queue.advance(j) for j in reversed(list(queue.jobs))]  # newest first
        data = [j for j in jobs if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    def job_route(action: Any) -> Any:
        """A route that answers with one job after `action` (reading or cancelling it)."""

        async def handler(request: web.Request) -> web.Response:
            if refused := refusal(request, api_key):
                return refused
            job_id = request.match_info["job_id"]
            obj = action(job_id)
            return web.json_response(obj) if obj else missing(job_id)

        return handler

    retrieve, cancel = job_route(queue.advance), job_route(queue.cancel)

    async def events(request: web.Request) -> web.Response:
        if refused := refusal(request, api_key):
            return refused
        job_id = request.match_info["job_id"]
        if job_id not in queue.jobs:
            return missing(job_id)
        return web.json_response({"object": "list", "data": queue.events(job_id), "has_more": False})

    for prefix in PREFIXES:
        app.router.add_post(f"{prefix}/fine_tuning/jobs", create)
        app.router.add_get(f"{prefix}/fine_tuning/jobs", listing)
        app.router.add_get(f"{prefix}/fine_tuning/jobs/{{job_id}}", retrieve)
        app.router.add_get(f"{prefix}/fine_tuning/jobs/{{job_id}}/events", events)
        app.router.add_post(f"{prefix}/fine_tuning/jobs/{{job_id}}/cancel", cancel)
    return queue
