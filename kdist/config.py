"""The run config: one YAML file that describes a whole distillation run.

Typed with pydantic so that an unknown key, a wrong type or a missing field fails before any
work starts, with one line that names the dotted path and what is allowed (ConfigError).
API keys never live in the config: teacher/judge sections name the environment variable
(or Kubernetes Secret key) that holds them, so a saved config cannot leak a secret.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from kdist.endpoints import SamplingSection, Section, _date_as_text, endpoint_union, kind_for_field, kind_of
from kdist.judging.rubrics import SINGLE_RUBRICS
from kdist.tasks import TASKS, TaskSettingsUnion


class ConfigError(ValueError):
    """A config problem, in one line that names the dotted path. The CLI exits 2 on it."""


class RunSection(Section):
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0


class RuntimeSection(Section):
    # None: attach to RAY_ADDRESS when set, otherwise start a local Ray bound to 127.0.0.1.
    ray_address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    log_to_driver: bool = True
    # A local Ray's temp dir (its logs) is removed when the run ends, failed or not; keep it
    # (`--keep-ray-logs`) to read the workers' logs of a failure.
    keep_ray_logs: bool = False


class SyntheticSource(Section):
    """A procedurally generated multiple-choice task (offline, seeded)."""

    kind: Literal["synthetic_mc"] = "synthetic_mc"
    # Rows per split: teacher_train is labelled data for the demo's own teacher; train is the
    # unlabelled pool the teacher answers; validation and test are held out.
    teacher_train: int = Field(default=6000, ge=0)
    train: int = Field(default=2000, ge=1)
    validation: int = Field(default=300, ge=1)
    test: int = Field(default=500, ge=1)


class FileSource(Section):
    """Local or object-storage JSONL, CSV or Parquet rows: one file, or a directory of them
    (path may be s3://, gs://, abfs://). Which column holds what is the task's column mapping
    (data.task.columns); the source names only its own columns."""

    kind: Literal["jsonl", "csv", "parquet"]
    path: str
    split_field: str | None = "split"  # rows without one go to `train` (or to data.splits)
    id_field: str | None = "id"  # rows without one get a hash of their prompt


class HFSource(Section):
    """A Hugging Face dataset through `datasets`: a hub id (needs network), a local dataset
    directory or data files (`data_files`), or a `save_to_disk` copy (read with
    `load_from_disk`). `splits` maps kdist's split names to the dataset's."""

    kind: Literal["hf"]
    path: str
    name: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "test": "test"})
    # Iterate without downloading the whole dataset first (hub datasets of many GB).
    streaming: bool = False
    id_field: str | None = "id"


class ExportSource(Section):
    """The export of a synthetic-data tool: each row a prompt (mapped by the task's columns),
    a completion and a quality score. Rows scoring above `min_score` (strictly, on the
    source's own scale: the customer-support recipe keeps > 4.9 of 1-5) are kept, and their
    completion is stored as the answer of candidate `source` in responses/: judge, filter and
    train read it as they read a teacher's, and no teacher is asked for it."""

    kind: Literal["synthetic_export"]
    path: str
    format: Literal["jsonl", "csv", "parquet"] | None = None  # None: from the file suffix
    completion_field: str = "completion"
    score_field: str = "score"
    min_score: float
    split_field: str | None = "split"
    id_field: str | None = "id"


# The model that writes a generated source's rows: any endpoint kind (kdist.endpoints).
WriterEndpoint = endpoint_union()
# A writer answers with a list (questions, question/answer turns): the endpoints' default of
# 16 tokens, meant for one-letter answers, cut every such answer short. Answers still cut at
# the limit are counted and warned about (kdist.data.written).
WRITER_MAX_TOKENS = 1024


def _writer_with_room(raw: Any) -> Any:
    """The writer's sampling.max_tokens defaults to WRITER_MAX_TOKENS unless the config sets it."""
    if not isinstance(raw, dict):
        return raw
    sampling = raw.get("sampling", {})
    if isinstance(sampling, dict) and "max_tokens" not in sampling:
        raw = {**raw, "sampling": {**sampling, "max_tokens": WRITER_MAX_TOKENS}}
    return raw


class DocumentQuestionsSource(Section):
    """Questions generated from documents (kdist.data.questions): local or object-storage text
    and Markdown files (PDF-extracted text too) are cut into chunks of about `chunk_size`
    characters overlapping by `chunk_overlap`; the `writer` writes `questions_per_chunk`
    questions per chunk, and each (question, chunk) pair is a `qa` prompt with the chunk as
    its context. `template`: a Jinja2 file replacing the packaged question prompt."""

    kind: Literal["document_questions"]
    path: str
    writer: WriterEndpoint  # type: ignore[valid-type]
    chunk_size: int = Field(default=1500, ge=100)
    chunk_overlap: int = Field(default=200, ge=0)
    questions_per_chunk: int = Field(default=3, ge=1, le=50)
    template: str | None = None

    _writer_default = field_validator("writer", mode="before")(_writer_with_room)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> DocumentQuestionsSource:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})")
        return self


class DialogueAugmentationSource(Section):
    """Conversations made longer (kdist.data.dialogues): for each chat of a JSONL, CSV or
    Parquet file (the `conversation` task's messages column), the `writer` writes
    `followups` more elaborate follow-up question / answer turns; the chat extended by each
    of them is a new conversation (its last answer the reference), kept beside the original
    unless `keep_original` is off. `template`: a Jinja2 file replacing the packaged prompt."""

    kind: Literal["dialogue_augmentation"]
    path: str
    format: Literal["jsonl", "csv", "parquet"] | None = None  # None: from the file suffix
    writer: WriterEndpoint  # type: ignore[valid-type]
    followups: int = Field(default=2, ge=1, le=20)
    keep_original: bool = True
    template: str | None = None
    split_field: str | None = "split"
    id_field: str | None = "id"

    _writer_default = field_validator("writer", mode="before")(_writer_with_room)


# Generated source kinds -> the task their rows are prompts of.
GENERATED_SOURCE_TASKS = {"document_questions": "qa", "dialogue_augmentation": "conversation"}


class SampleSection(Section):
    """A few rows for a trial: the first N source rows, or N at random (seeded by run.seed)."""

    n: int = Field(ge=1)
    how: Literal["first", "random"] = "first"


def _task_kind_as_mapping(value: Any) -> Any:
    # `task: nli` is short for `task: {kind: nli}` (a task with its default settings).
    return {"kind": value} if isinstance(value, str) else value


class DataSection(Section):
    task: TaskSettingsUnion = Field(default_factory=lambda: TASKS["multiple_choice"].Settings())
    source: SyntheticSource | FileSource | HFSource | ExportSource | DocumentQuestionsSource | DialogueAugmentationSource = Field(
        default_factory=SyntheticSource, discriminator="kind"
    )
    system_prompt: str | None = None
    sample: SampleSection | None = None
    # Split name -> fraction of the rows (0.7) or count (100): every row gets one of these
    # splits (its source split column is then ignored), seeded by run.seed; the rest is left
    # out and counted. None: the source's split column, `train` where there is none.
    splits: dict[str, float | int] | None = None
    # Splits keep the label proportions of the data (for tasks with labels).
    stratify: bool = True
    # error: a bad source row stops prepare with one line naming it; skip: it is left out and
    # counted in the stage summary.
    on_bad_row: Literal["error", "skip"] = "error"

    @field_validator("task", mode="before")
    @classmethod
    def _task_shorthand(cls, value: Any) -> Any:
        return _task_kind_as_mapping(value)

    @field_validator("splits")
    @classmethod
    def _fractions_or_counts(cls, splits: dict[str, float | int] | None) -> dict[str, float | int] | None:
        if splits is None:
            return None
        if not splits:
            raise ValueError("name at least one split, e.g. {train: 0.7, validation: 0.3}")
        counts = [isinstance(v, int) for v in splits.values()]
        if any(counts) and not all(counts):
            raise ValueError("give every split a fraction (0.7) or every split a count (100), not both")
        if all(counts) and min(splits.values()) < 1:
            raise ValueError("split counts must be at least 1")
        if not any(counts) and (min(splits.values()) <= 0 or sum(splits.values()) > 1 + 1e-9):
            raise ValueError("split fractions must be > 0 and add up to at most 1")
        return splits

    @model_validator(mode="after")
    def _source_makes_the_task(self) -> DataSection:
        if self.source.kind == "synthetic_mc" and self.task.kind != "multiple_choice":
            raise ValueError(f"source kind synthetic_mc makes multiple_choice rows, not {self.task.kind}")
        made = GENERATED_SOURCE_TASKS.get(self.source.kind)
        if made and self.task.kind != made:
            raise ValueError(f"source kind {self.source.kind} makes {made} rows, not {self.task.kind} (set data.task: {made})")
        return self


class TeacherRole(Section):
    """What the teacher adds to its endpoint: which splits it answers, and how many must."""

    # The held-out split is answered too: the evaluate stage compares the teacher on it.
    splits: list[str] = Field(default_factory=lambda: ["train", "validation", "test"])
    min_success_ratio: float = Field(default=0.95, ge=0.0, le=1.0)
    # Hard caps on what the teacher's answers in this output dir may cost (in
    # prices.currency) and how many output tokens they may take: a request goes out only
    # while the spent plus the worst case of everything in flight stays within them
    # (kdist.llm.budget); the rows left are counted as not asked.
    max_cost: float | None = Field(default=None, gt=0.0)
    max_output_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _caps_on_a_paid_endpoint(self) -> TeacherRole:
        capped = [name for name in ("max_cost", "max_output_tokens") if getattr(self, name) is not None]
        if capped and not hasattr(self, "endpoint"):
            raise ValueError(f"{capped[0]} caps a remote teacher (kinds openai, azure, openai_batch), not kind {getattr(self, 'kind', '?')}")
        if self.max_cost is not None and getattr(self, "prices", None) is None:
            raise ValueError("max_cost needs prices (input_per_million_tokens, output_per_million_tokens) to count what is spent")
        return self


# `teacher:` is an endpoint of any kind (kdist.endpoints) plus the teacher's own fields.
TeacherSection = endpoint_union(TeacherRole, "Teacher")


class JudgeRole(Section):
    """What a judge adds to its endpoint. Scores are stored as the judge gave them and
    normalised to [0, 1]; an answer is kept when its normalised score is >= min_score."""

    min_score: float = Field(default=0.8, ge=0.0, le=1.0)
    # A single-grading rubric of kdist.judging.rubrics (reference_guided sees the reference
    # answer: for grading training data only), and a file that replaces its template.
    rubric: Literal[SINGLE_RUBRICS] = "correctness"  # type: ignore[valid-type]
    template: str | None = None
    scale: Literal["0-1", "1-5"] = "1-5"
    # Asks per answer: 1 (greedy by default); N > 1 asks N times at sampling.temperature and
    # scores the mean of the parsable samples (kdist.stages.judge).
    samples: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _samples_need_a_temperature(self) -> JudgeRole:
        sampling = getattr(self, "sampling", None)
        if self.samples > 1 and sampling is not None and sampling.temperature == 0:
            raise ValueError(f"samples: {self.samples} at sampling.temperature 0 asks for one greedy answer "
                             f"{self.samples} times; set sampling.temperature above 0, or samples: 1")
        return self


class RuleJudge(Section):
    """Offline: an answer scores 1 when it parses as an answer of the prompt's task, else 0."""

    kind: Literal["rule"] = "rule"
    min_score: float = Field(default=0.8, ge=0.0, le=1.0)


# `judge:` is the rule, or an LLM judge: an endpoint of any kind plus the judge's own fields.
JudgeSection = endpoint_union(JudgeRole, "Judge", extra=(RuleJudge,))


class ModelBuildSection(Section):
    """Architecture of a tiny Llama built from scratch (offline demo and tests)."""

    hidden_size: int = Field(default=64, ge=8)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    intermediate_size: int | None = None
    init_std: float = Field(default=0.1, gt=0.0)
    max_position_embeddings: int = Field(default=128, ge=16)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelBuildSection:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        return self


class StudentSection(Section):
    # A local HF model dir or hub id; with `build`, a tiny model is built there offline.
    model: str
    build: ModelBuildSection | None = None
    # A Jinja chat template for a student whose tokenizer has none (many base checkpoints);
    # when set it replaces the tokenizer's own and is saved with the trained model.
    chat_template: str | None = None


class LoraSection(Section):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    # Fully trained modules beside the adapter (e.g. lm_head for a model built from scratch).
    modules_to_save: list[str] = Field(default_factory=list)


class OnPolicySection(Section):
    """train.kd.mode on_policy: how the student completes its share of each batch's prompts."""

    # lambda: the fraction of each batch's prompts the student completes itself (the rest keep
    # the training set's completions, the teacher's answers). Named lmbda as in TRL's GKD.
    lmbda: float = Field(default=0.5, ge=0.0, le=1.0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0: greedy")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=32, ge=1)


class KDSection(Section):
    """How the student learns from the teacher (the loss math: kdist/train/losses.py).

    Defaults that depend on the mode (filled in when left out): logit KD reads the offline
    top-k with forward KL and alpha 0.5; on_policy scores with the online teacher, reverse KL
    and alpha 0 (the README's "distillation modes" says why)."""

    # sequence: SFT on the teacher's answers; logit: alpha*CE + (1-alpha)*T^2*D(teacher||student);
    # on_policy: T^2*D on completions the student partly writes itself (train.kd.on_policy).
    mode: Literal["sequence", "logit", "on_policy"] = "sequence"
    # online: the teacher model (teacher.model, local HF dir) runs frozen on the training
    # workers; offline: the top-k logprobs stored by generate (teacher.sampling.top_logprobs).
    teacher_logits: Literal["online", "offline"] = "offline"
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    temperature: float = Field(default=1.0, gt=0.0)
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(default=0.5, gt=0.0, lt=1.0, description="JSD teacher weight")
    topk_tail: Literal["bucket", "renormalise"] = "bucket"
    chunk_size: int | None = Field(default=None, ge=1, description="tokens per loss chunk")
    # Sequence-level KD: also train on the ground-truth answer for this fraction of the rows
    # whose prompt has a reference (0: teacher answers only).
    ground_truth_mix: float = Field(default=0.0, ge=0.0, le=1.0)
    # Logit KD between different vocabularies: uld compares sorted probability vectors, align
    # maps the teacher's probabilities onto the student's tokens of the same string; both at
    # positions where the two tokenizations start at the same character. Online, or offline
    # from top-k stored as strings with offsets (an OpenAI-format teacher naming tokens by text).
    cross_tokenizer: Literal["uld", "align"] | None = None
    on_policy: OnPolicySection = Field(default_factory=OnPolicySection)

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            on_policy = data.get("mode") == "on_policy"
            data = {"teacher_logits": "online" if on_policy else "offline",
                    "divergence": "reverse_kl" if on_policy else "forward_kl",
                    "alpha": 0.0 if on_policy else 0.5, **data}
        return data

    @model_validator(mode="after")
    def _modes_fit(self) -> KDSection:
        if self.mode == "on_policy" and self.teacher_logits != "online":
            raise ValueError("train.kd.mode on_policy needs train.kd.teacher_logits online: the "
                             "teacher scores the student's own samples")
        if self.mode == "on_policy" and self.alpha != 0.0:
            raise ValueError("train.kd.alpha must be 0 with train.kd.mode on_policy: CE on the "
                             "student's own samples would reinforce them")
        if self.cross_tokenizer and self.mode != "logit":
            raise ValueError(f"train.kd.cross_tokenizer works with train.kd.mode logit (not "
                             f"{self.mode})")
        if self.cross_tokenizer and self.ground_truth_mix:
            raise ValueError("train.kd.ground_truth_mix is not supported with "
                             "train.kd.cross_tokenizer; set it to 0")
        return self


class HostedTrainSection(Section):
    """Fine-tuning on a hosted service (kdist.train.hosted): the OpenAI fine-tuning API
    (`kind: openai`, `endpoint` its base URL) or Azure OpenAI / Azure AI Foundry (`kind: azure`,
    `endpoint` the resource URL, `api_version` required). Unset hyperparameters are the
    provider's "auto"; the seed is `run.seed`."""

    kind: Literal["openai", "azure"] = "openai"
    base_model: str = Field(min_length=1)
    endpoint: str = Field(default="https://api.openai.com/v1", min_length=1)
    api_version: str | None = None
    # Name of the environment variable that holds the API key (Azure without one: Entra ID).
    api_key_env: str | None = None
    n_epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    learning_rate_multiplier: float | None = Field(default=None, gt=0.0)
    suffix: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,40}$")
    # Polling the job backs off from poll_initial_s to poll_max_s; API calls are retried by
    # the openai client (max_attempts, honouring Retry-After).
    poll_initial_s: float = Field(default=10.0, gt=0.0)
    poll_max_s: float = Field(default=300.0, gt=0.0)
    max_attempts: int = Field(default=6, ge=1)
    timeout_s: float = Field(default=60.0, gt=0.0)

    @field_validator("api_version", mode="before")
    @classmethod
    def _version_as_written(cls, value: Any) -> Any:
        return _date_as_text(value)

    @model_validator(mode="after")
    def _api_version_for_azure(self) -> HostedTrainSection:
        if self.kind == "azure" and self.api_version is None:
            raise ValueError("kind azure needs api_version (e.g. 2025-04-01-preview)")
        if self.kind == "openai" and self.api_version is not None:
            raise ValueError("api_version is for kind azure; kind openai takes none")
        return self


class TrainSection(Section):
    # ray: Ray Train + DeepSpeed on the cluster; hosted: a fine-tuning service (train.hosted).
    backend: Literal["ray", "hosted"] = "ray"
    hosted: HostedTrainSection | None = None
    method: Literal["lora", "full"] = "lora"
    lora: LoraSection = Field(default_factory=LoraSection)
    kd: KDSection = Field(default_factory=KDSection)
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    zero_stage: int = Field(default=2, ge=0, le=3)
    offload_optimizer: bool = False  # ZeRO >= 1: optimizer state in CPU memory
    offload_params: bool = False  # ZeRO-3: parameters in CPU memory
    precision: Literal["fp32", "bf16"] = "fp32"
    learning_rate: float = Field(default=2e-3, gt=0.0)
    # Linear warmup (None: 10% of max_steps, at most 50), then constant, linear or cosine decay.
    warmup_steps: int | None = Field(default=None, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    batch_size: int = Field(default=64, ge=1, description="global batch, split across workers")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    max_steps: int = Field(default=300, ge=1)
    max_seconds: float | None = Field(default=None, gt=0.0)
    eval_every: int = Field(default=25, ge=1)
    # Stop early once validation accuracy reaches this (None: run max_steps).
    target_accuracy: float | None = Field(default=None, gt=0.0, le=1.0)
    max_seq_len: int = Field(default=96, ge=8)
    # Pack several examples per row of max_seq_len tokens (batch_size then counts rows).
    packing: bool = False
    checkpoint_every: int | None = Field(default=None, ge=1, description="steps; None: eval_every")
    max_failures: int = Field(default=0, ge=-1, description="worker-group restarts (-1: forever)")
    # A DeepSpeed JSON of your own: its keys override the derived ones ("auto" keeps ours).
    deepspeed_config: str | None = None

    @model_validator(mode="after")
    def _hosted_backend_has_its_section(self) -> TrainSection:
        if self.backend == "hosted" and self.hosted is None:
            raise ValueError("backend hosted needs a train.hosted section (kind, base_model, endpoint, ...)")
        if self.backend == "ray" and self.hosted is not None:
            raise ValueError("train.hosted is used only with backend hosted; set train.backend: hosted or remove it")
        return self

    @model_validator(mode="after")
    def _offload_params_needs_zero3(self) -> TrainSection:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self

    @model_validator(mode="after")
    def _packing_fits_the_kd_mode(self) -> TrainSection:
        # Both rebuild rows per example (student samples; a second tokenization).
        if self.packing and (self.kd.mode == "on_policy" or self.kd.cross_tokenizer):
            raise ValueError("train.packing works with neither train.kd.mode on_policy nor "
                             "train.kd.cross_tokenizer; set train.packing false")
        return self


# The models evaluate knows without an endpoint: the student before and after training (served
# as `evaluate.kind`) and the teacher (its stored answers from generate).
BUILTIN_MODELS = ("base", "student", "teacher")
ModelEndpointSection = endpoint_union()


class EvaluatedModel(Section):
    """One model evaluate scores. base, student and teacher need no endpoint; any other name
    does (e.g. a model fine-tuned on a hosted service). `model_file`: a JSON file in the train
    stage's output whose `model` key names the model to ask (a hosted fine-tuning job's result)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    endpoint: ModelEndpointSection | None = None  # type: ignore[valid-type]
    model_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_alone_and_model_from_file(cls, raw: Any) -> Any:
        if isinstance(raw, str):  # `models: [base, student]`
            return {"name": raw}
        endpoint = raw.get("endpoint") if isinstance(raw, dict) else None
        if isinstance(endpoint, dict) and raw.get("model_file") and "model" not in endpoint:
            raw = {**raw, "endpoint": {**endpoint, "model": f"(from {raw['model_file']})"}}
        return raw

    @model_validator(mode="after")
    def _endpoint_where_needed(self) -> EvaluatedModel:
        if self.endpoint is None and self.name not in BUILTIN_MODELS:
            raise ValueError(f"model '{self.name}' needs an endpoint (only {', '.join(BUILTIN_MODELS)} have one by default)")
        if self.model_file is not None and self.endpoint is None:
            raise ValueError(f"model '{self.name}': model_file needs an endpoint to ask the model at")
        return self


class PairwiseJudgeRole(Section):
    """What the evaluation's pairwise judge adds to its endpoint: a file that replaces the
    pairwise template (kdist/judging/templates/pairwise.jinja; it never shows the reference)."""

    template: str | None = None


EvaluateJudgeSection = endpoint_union(PairwiseJudgeRole, "EvaluateJudge")


class EvaluateSection(Section):
    """Which models answer the held-out split, how the students are served, and what the
    judge compares."""

    split: str = "test"
    # The endpoint kind base and student are served with: transformers, or vLLM on the cluster.
    kind: Literal["hf", "vllm"] = "hf"
    batch_size: int = Field(default=64, ge=1)
    replicas: int = Field(default=1, ge=1)
    sampling: SamplingSection = Field(default_factory=lambda: SamplingSection(max_tokens=16))
    models: list[EvaluatedModel] = Field(default_factory=lambda: [EvaluatedModel(name=n) for n in BUILTIN_MODELS])
    # The pairwise judge; when unset, the top-level judge if it is a model (the rule judge
    # compares nothing).
    judge: EvaluateJudgeSection | None = None  # type: ignore[valid-type]
    comparisons: list[list[str]] = Field(default_factory=lambda: [["student", "base"], ["student", "teacher"]])
    # Prompts of the split the teacher is asked again, to measure its serving speed (0: off;
    # a paid teacher's stored answers carry their own latency).
    teacher_sample: int = Field(default=0, ge=0)
    worst_rows: int = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _comparisons_name_models(self) -> EvaluateSection:
        names = [model.name for model in self.models]
        if len(set(names)) < len(names):
            raise ValueError(f"evaluate.models names a model twice: {', '.join(names)}")
        for index, pair in enumerate(self.comparisons):
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"evaluate.comparisons[{index}] must be two different model names, got {pair}")
            unknown = [name for name in pair if name not in names]
            if unknown:
                raise ValueError(f"evaluate.comparisons[{index}] names '{unknown[0]}', not one of evaluate.models ({', '.join(names)})")
        return self


class DemoSection(Section):
    """Settings that only the offline demo uses: it trains its own teacher (and judge) first."""

    teacher_build: ModelBuildSection = Field(
        default_factory=lambda: ModelBuildSection(hidden_size=128, num_layers=3, num_heads=8)
    )
    teacher_train: TrainSection = Field(
        default_factory=lambda: TrainSection(
            method="full", max_steps=1500, max_seconds=300, target_accuracy=0.95
        )
    )
    # Refuse to distil from a teacher whose test accuracy is not at least this.
    min_teacher_accuracy: float = Field(default=0.6, gt=0.0, le=1.0)
    tokenizer_vocab_size: int = Field(default=600, ge=64)
    # The demo's pairwise judge: the trained teacher fine-tuned on comparisons built from
    # teacher_train (kdist.demo_judge); None: no judge model (evaluate compares nothing).
    judge_train: TrainSection | None = None


class ResourcesSection(Section):
    """Requests of one Ray pod; limits are set equal (GPUs as nvidia.com/gpu)."""

    cpu: str = Field(default="4", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="e.g. 4, 500m")
    memory: str = Field(default="16Gi", pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$")
    gpu: int = Field(default=0, ge=0, description="nvidia.com/gpu per pod")

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity_as_text(cls, value: Any) -> Any:
        # `cpu: 4` in YAML (or an override cpu=4) is a number; Kubernetes quantities are text.
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return str(value) if is_number else value


class TolerationSection(Section):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class PodGroupSection(Section):
    """Where and how big the pods of one Ray group are."""

    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[TolerationSection] = Field(default_factory=list)
    # A Kubernetes affinity object, passed through as written.
    affinity: dict[str, Any] | None = None


class WorkerGroupSection(PodGroupSection):
    resources: ResourcesSection = Field(
        default_factory=lambda: ResourcesSection(cpu="8", memory="64Gi", gpu=1)
    )
    replicas: int = Field(default=1, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _replicas_within_bounds(self) -> WorkerGroupSection:
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError("need min_replicas <= replicas <= max_replicas")
        return self


class SecretEnvSection(Section):
    """One environment variable of the Ray pods filled from a key of a Kubernetes Secret."""

    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="e.g. AZURE_API_KEY")
    secret_name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str


class ClusterSection(Section):
    """What `kdist submit` needs to run this config as a KubeRay RayJob (ignored locally)."""

    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image: str = "ghcr.io/kdist/kdist:0.1.0"
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    # Existing registry Secrets (kubernetes.io/dockerconfigjson) for an image in a private
    # registry: every pod of the job (head, workers, submitter) pulls with them.
    image_pull_secrets: list[str] = Field(default_factory=list)
    service_account: str = "kdist"
    head: PodGroupSection = Field(
        default_factory=lambda: PodGroupSection(resources=ResourcesSection(cpu="4", memory="16Gi"))
    )
    workers: WorkerGroupSection = Field(default_factory=WorkerGroupSection)
    # Ray autoscaler inside the RayCluster: workers scale between min_replicas and max_replicas.
    autoscaling: bool = False
    # PVCs (must exist): the model/dataset cache (HF_HOME) and the run outputs; None: none.
    cache_pvc: str | None = "kdist-cache"
    outputs_pvc: str | None = "kdist-outputs"
    secret_env: list[SecretEnvSection] = Field(default_factory=list)
    # RayJob lifecycle: the cluster is torn down after the job, and never outlives a deadline.
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    active_deadline_seconds: int = Field(default=86400, ge=1)
    backoff_limit: int = Field(default=0, ge=0)

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        # Caught here, not as a pod the API server rejects after the RayJob was created.
        for name in names:
            if len(name) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
                raise ValueError(f"'{name}' is not a Secret name (lowercase a-z, 0-9, '-', '.')")
        return names


class RunConfig(Section):
    run: RunSection = Field(default_factory=RunSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    data: DataSection = Field(default_factory=DataSection)
    teacher: TeacherSection
    judge: JudgeSection = Field(default_factory=RuleJudge)
    student: StudentSection
    train: TrainSection = Field(default_factory=TrainSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    demo: DemoSection | None = None
    cluster: ClusterSection = Field(default_factory=ClusterSection)

    @model_validator(mode="before")
    @classmethod
    def _teacher_kind_defaults_to_hf(cls, raw: Any) -> Any:
        # A teacher without `kind` is a local transformers model, as before endpoints had kinds.
        if isinstance(raw, dict) and isinstance(raw.get("teacher"), dict):
            raw = {**raw, "teacher": {"kind": "hf", **raw["teacher"]}}
        return raw


# --- loading, overrides, errors -------------------------------------------------------------


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: YAML 1.1 needs a dot in a float, so
    `learning_rate: 2e-4` (in a file or as an override) was the string '2e-4' and failed
    validation as not a number."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(text: str) -> Any:
    """A config's YAML text as Python values (numbers as YAML 1.2 reads them)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply dotted overrides (`teacher.concurrency=32`), validate."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_first_error(err)) from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in the raw config; the value is parsed as YAML (numbers, lists...)."""
    key, sep, text = override.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"override '{override}' must look like section.key=value")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
        node = child
    node[leaf] = read_yaml(text) if text else None


def describe_first_error(err: ValidationError) -> str:
    """One line for the first validation error: dotted path, problem, what is allowed."""
    first = err.errors()[0]
    raw_loc = [str(part) for part in first["loc"]]
    model, tag = _walk(raw_loc[:-1] if first["type"] == "extra_forbidden" else raw_loc)
    loc = [part for part in raw_loc if part not in _union_tags()]
    dotted = ".".join(loc) or "<top level>"
    if first["type"] == "extra_forbidden":
        allowed = sorted(model.model_fields) if model is not None else []
        owners = [kind for kind in kind_for_field(loc[-1]) if kind != tag]
        if tag and owners:
            return (f"'{dotted}' is not a setting of kind '{tag}' (it belongs to kind "
                    f"{', '.join(owners)}); allowed: {', '.join(allowed)}")
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"unknown key '{dotted}'{did_you_mean}; allowed: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"missing required key '{dotted}'"
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return f"'{dotted}.kind': {first['msg']}"
    got = first.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
    return f"'{dotted}': {first['msg']}{shown}"


def _union_tags() -> set[str]:
    """Every `kind` tag of a tagged union in the config: pydantic puts the tag in an error's
    location, e.g. ('teacher', 'openai', 'concurency'); it is not a key the user wrote."""
    tags: set[str] = set()
    seen: set[type] = set()

    def visit(model: type[Section]) -> None:
        if model in seen:
            return
        seen.add(model)
        for field in model.model_fields.values():
            found = _section_types(field.annotation)
            for member in found if isinstance(found, list) else [found] if found else []:
                if isinstance(found, list) and "kind" in member.model_fields:
                    tags.add(kind_of(member))
                visit(member)

    visit(RunConfig)
    return tags


def _walk(loc: list[str]) -> tuple[type[Section] | None, str | None]:
    """The section class at a raw error location (following union tags), and the last tag."""
    model: Any = RunConfig
    tag = None
    for part in loc:
        if part.isdigit():  # an index into a list of sections: the element's section
            continue
        if part in _union_tags() and isinstance(model, list):
            model = next((m for m in model if kind_of(m) == part), None)
            tag = part
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None, tag
        model = _section_types(field.annotation)
    return (model if isinstance(model, type) else None), tag


def _section_types(annotation: Any) -> Any:
    """A Section class, or the list of members of a union of sections."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    members: list[type[Section]] = []
    for arg in getattr(annotation, "__args__", ()):
        found = _section_types(arg)
        if isinstance(found, list):
            members.extend(found)
        elif found is not None:
            members.append(found)
    if not members:
        return None
    return members[0] if len(members) == 1 else members


# --- saving ------------------------------------------------------------------------------------

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)$", re.IGNORECASE)
# `user:password@` in a URL (https://user:KEY@host/...): the part a gateway URL may carry a key in.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
# request_extras go to the endpoint as they are, under any name (a gateway's `x_key`, a
# `subscription`): only these known sampling and decoding options are shown, the rest hidden.
SHOWN_REQUEST_EXTRAS = frozenset({
    "chat_template_kwargs", "frequency_penalty", "guided_choice", "guided_json", "guided_regex",
    "ignore_eos", "logit_bias", "min_p", "min_tokens", "n", "presence_penalty",
    "repetition_penalty", "response_format", "return_tokens_as_token_ids", "seed",
    "skip_special_tokens", "stop", "stop_token_ids", "top_k",
})
HIDDEN = "***"


def redacted(data: Any) -> Any:
    """A copy safe to save or log: values under secret-looking keys, credentials inside URLs,
    and request_extras outside the allow-list are replaced (`api_key_env` names stay)."""
    if isinstance(data, dict):
        return {key: _redacted_value(str(key), value) for key, value in data.items()}
    if isinstance(data, list):
        return [redacted(item) for item in data]
    if isinstance(data, str):
        return _URL_CREDENTIALS.sub(f"{HIDDEN}@", data)
    return data


def _redacted_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key) and value:
        return HIDDEN
    if key == "request_extras" and isinstance(value, dict):
        return {
            name: redacted(extra) if name in SHOWN_REQUEST_EXTRAS else HIDDEN
            for name, extra in value.items()
        }
    return redacted(value)


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(redacted(config.model_dump(mode="json")), sort_keys=False)
