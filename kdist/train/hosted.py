"""Fine-tuning on a hosted service: the OpenAI fine-tuning API, Azure OpenAI / Azure AI Foundry.

    fine_tune(settings, sft_uri, out_uri, seed) -> metrics

The filtered sets (sft/train, sft/validation) go up as the chat JSONL `kdist export` writes
(kdist.export), a job is created with the base model and hyperparameters, and followed with
backoff, its new events logged as progress. The job's record (`hosted_job.json` in the train
output) is rewritten after each step and always before the next, so a restarted kdist
resumes the job instead of paying for another:

- a recorded job is polled again, a recorded upload is not uploaded again;
- a crash between an upload and its record: the file is found by its name, which carries the
  run's fingerprint (the base model, hyperparameters, seed and the files' contents);
- a crash between the create call and its record: the job is found among the jobs by its
  training file (ours alone, recorded before the create) and, on OpenAI, by the fingerprint
  in its metadata.

A succeeded job's model name goes to `hosted_model.json` (`{"model": ...}`), which evaluate
reads through `evaluate.models[].model_file` to ask it as an endpoint. A failed or cancelled
job ends the stage with one line: the provider's error, scrubbed of the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from tenacity import Retrying, retry_if_result, stop_never, wait_exponential

from kdist import storage
from kdist.config import HostedTrainSection
from kdist.errors import UsageError
from kdist.export import chat_jsonl, chat_record
from kdist.llm.openai import call_api, sync_client
from kdist.llm.remote import api_key_from_env
from kdist.llm.scrub import Scrubber

log = logging.getLogger(__name__)

JOB_FILE = "hosted_job.json"
MODEL_FILE = "hosted_model.json"
DATA_DIR = "hosted_data"
SPLITS = ("train", "validation")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
METADATA_KEY = "kdist_run"
PURPOSE = "fine-tune"


@dataclass
class JobRecord:
    """What was done so far; `fingerprint` ties it to one run's data and settings."""

    fingerprint: str
    train_file_id: str | None = None
    validation_file_id: str | None = None
    job_id: str | None = None
    status: str = "new"


class HostedFineTune:
    def __init__(self, settings: HostedTrainSection, out_uri: str, seed: int) -> None:
        self.settings, self.out, self.seed = settings, out_uri, seed
        try:
            key = api_key_from_env(settings)  # type: ignore[arg-type]
        except RuntimeError as err:
            raise UsageError(f"train.hosted.{err}") from None
        self.scrub = Scrubber.for_endpoint(settings.endpoint, key, {})
        self.client = sync_client(settings, key)  # OpenAI, or AzureOpenAI when api_version is set
        self.seen_events: set[str] = set()

    def run(self, sft_uri: str) -> dict[str, Any]:
        contents = {split: self._jsonl(sft_uri, split) for split in SPLITS}
        if not contents["train"]:
            raise UsageError(f"train.backend hosted: {storage.join(sft_uri, 'train')} has no rows to fine-tune on")
        record = self._record(self._fingerprint(contents))
        self._upload(record, contents)
        job = self._job(record)
        job = self._follow(record, job)
        return self._finish(job)

    # --- the data --------------------------------------------------------------------------

    def _jsonl(self, sft_uri: str, split: str) -> str:
        """A split as chat JSONL, in id order (the same bytes, so the same fingerprint, on a
        rerun); written beside the record so what went up can be read."""
        path = storage.join(sft_uri, split)
        if not storage.exists(path):
            return ""
        rows = sorted(storage.read_table(path, columns=["id", "messages"]).to_pylist(), key=lambda row: row["id"])
        text = chat_jsonl([chat_record(row["messages"]) for row in rows])
        storage.write_text(storage.join(self.out, DATA_DIR, f"{split}.jsonl"), text)
        return text

    def _fingerprint(self, contents: dict[str, str]) -> str:
        settings = {"kind": self.settings.kind, "base_model": self.settings.base_model, "seed": self.seed,
                    "hyperparameters": self._hyperparameters(), "suffix": self.settings.suffix}  # fmt: skip
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for split in SPLITS:
            digest.update(b"\0" + contents[split].encode())
        return digest.hexdigest()[:16]

    # --- upload, create ----------------------------------------------------------------------

    def _upload(self, record: JobRecord, contents: dict[str, str]) -> None:
        for split in SPLITS:
            field = f"{split}_file_id"
            if getattr(record, field) is not None or not contents[split]:
                continue
            name = f"kdist-{record.fingerprint}-{split}.jsonl"
            found = self._uploaded_before(name)
            uploaded = found or self._call(lambda: self.client.files.create(file=(name, contents[split].encode()), purpose=PURPOSE))
            setattr(record, field, uploaded.id)
            self._save(record)
            log.info("hosted fine-tuning: %s set %s %s", split, uploaded.id, "found (uploaded before)" if found else "uploaded")

    def _uploaded_before(self, name: str) -> Any:
        """The file a crash kept from being recorded, found by its name."""
        for stored in self._call(lambda: self.client.files.list(purpose=PURPOSE)):
            if stored.filename == name:
                return stored
        return None

    def _job(self, record: JobRecord) -> Any:
        if record.job_id is not None:
            log.info("hosted fine-tuning: job %s of an earlier run picked up (polled, not created again)", record.job_id)
            return self._call(lambda: self.client.fine_tuning.jobs.retrieve(record.job_id))
        job = self._created_before(record) or self._call(lambda: self.client.fine_tuning.jobs.create(**self._create_args(record)))
        record.job_id, record.status = job.id, job.status
        self._save(record)
        log.info("hosted fine-tuning: job %s for %s, %s", job.id, self.settings.base_model, job.status)
        return job

    def _create_args(self, record: JobRecord) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": self.settings.base_model, "training_file": record.train_file_id, "seed": self.seed,
            "method": {"type": "supervised", "supervised": {"hyperparameters": self._hyperparameters()}},
        }  # fmt: skip
        if record.validation_file_id:
            args["validation_file"] = record.validation_file_id
        if self.settings.suffix:
            args["suffix"] = self.settings.suffix
        if self.settings.kind == "openai":  # Azure's fine-tuning API takes no metadata
            args["metadata"] = {METADATA_KEY: record.fingerprint}
        return args

    def _hyperparameters(self) -> dict[str, Any]:
        names = ("n_epochs", "batch_size", "learning_rate_multiplier")
        return {name: value for name in names if (value := getattr(self.settings, name)) is not None}

    def _created_before(self, record: JobRecord) -> Any:
        """The job a crash kept from being recorded: the one made from our training file."""
        for job in self._call(lambda: self.client.fine_tuning.jobs.list(limit=100)):
            if job.training_file == record.train_file_id or (job.metadata or {}).get(METADATA_KEY) == record.fingerprint:
                log.info("hosted fine-tuning: job %s found (created before the crash)", job.id)
                return job
        return None

    # --- follow, finish ----------------------------------------------------------------------

    def _follow(self, record: JobRecord, job: Any) -> Any:
        poll = Retrying(
            retry=retry_if_result(lambda job: job.status not in TERMINAL), stop=stop_never, reraise=True,
            wait=wait_exponential(multiplier=self.settings.poll_initial_s, max=self.settings.poll_max_s),
        )  # fmt: skip
        return poll(self._poll_once, record) if job.status not in TERMINAL else job

    def _poll_once(self, record: JobRecord) -> Any:
        job = self._call(lambda: self.client.fine_tuning.jobs.retrieve(record.job_id))
        for event in reversed(list(self._call(lambda: self.client.fine_tuning.jobs.list_events(record.job_id, limit=50)))):
            if event.id not in self.seen_events:
                self.seen_events.add(event.id)
                log.info("hosted fine-tuning %s: %s", record.job_id, self.scrub(str(event.message)))
        if job.status != record.status:
            record.status = job.status
            self._save(record)
        return job

    def _finish(self, job: Any) -> dict[str, Any]:
        if job.status != "succeeded":
            why = getattr(job.error, "message", None) or "no error given"
            raise UsageError(f"fine-tuning job {job.id} {job.status}: {self.scrub(str(why), 300)}")
        result = {"model": job.fine_tuned_model, "job_id": job.id, "base_model": job.model,
                  "provider": self.settings.kind, "trained_tokens": job.trained_tokens}  # fmt: skip
        storage.write_json(storage.join(self.out, MODEL_FILE), result)
        log.info("hosted fine-tuning: %s trained (%s tokens)", job.fine_tuned_model, job.trained_tokens)
        return {"backend": "hosted", **result}

    # --- plumbing --------------------------------------------------------------------------

    def _call(self, call: Any) -> Any:
        # What the client's retries could not cure ends the stage in one line; the record
        # stays, so a rerun picks the job up.
        return call_api(call, "fine-tuning API", self.settings.endpoint, self.scrub)

    def _record(self, fingerprint: str) -> JobRecord:
        path = storage.join(self.out, JOB_FILE)
        if storage.exists(path):
            saved = JobRecord(**storage.read_json(path))
            if saved.fingerprint == fingerprint:
                return saved
            log.info("hosted fine-tuning: data or settings changed since job %s; a new job is made", saved.job_id)
        return JobRecord(fingerprint)

    def _save(self, record: JobRecord) -> None:
        storage.write_json(storage.join(self.out, JOB_FILE), asdict(record))


def fine_tune(settings: HostedTrainSection, sft_uri: str, out_uri: str, seed: int) -> dict[str, Any]:
    """Fine-tune `settings.base_model` on sft/train (and sft/validation); the metrics."""
    return HostedFineTune(settings, out_uri, seed).run(sft_uri)
