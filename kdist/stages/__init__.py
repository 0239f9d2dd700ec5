"""The stage registry: every stage declared once, here.

A stage has a name, a one-line help, the directory it writes under the run's `output_dir`,
the stages whose outputs it reads, the config settings its fingerprint covers, the files it
reads from outside the run (data, model directories: they must exist, and their sizes and
modification times are fingerprinted too), the endpoints it calls (their keys must be set),
and its runner (`module:function`, imported only when the stage runs, so the CLI starts fast). The pipeline,
the CLI, the `ray_jobs/` entrypoint, the RayJob builder and the chart's values schema
(`make chart-stages`) all read this list; adding a stage means adding one entry and its module.

A runner is `run(context: StageContext) -> summary`; summaries are JSON-able dicts that end
up in the stage's `_SUCCESS.json`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdist import storage
from kdist.config import RunConfig
from kdist.endpoints import Endpoint, RemoteEndpoint
from kdist.errors import StageFailed, UsageError, one_line_cause


@dataclass(frozen=True)
class StageContext:
    """What a runner gets: the config, the run's output location, and --resume."""

    config: RunConfig
    root: str
    resume: bool = False

    def dir(self, stage: str) -> str:
        """Where `stage` writes (a local path or a URI)."""
        return storage.join(self.root, BY_NAME[stage].output)


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    output: str
    inputs: tuple[str, ...]
    settings: Callable[[RunConfig], list[Any]]
    runner: str  # "module:function"
    # Dotted config field -> location, for what the stage reads from outside the run.
    sources: Callable[[RunConfig], dict[str, str]] = lambda config: {}
    # Role -> endpoint, for the models the stage calls.
    endpoints: Callable[[RunConfig], dict[str, Endpoint]] = lambda config: {}
    # True when the output is replaced only once the stage succeeds (one atomic table write):
    # a failed rerun then leaves the earlier output and its success marker as they were.
    atomic: bool = False

    def run(self, context: StageContext) -> dict[str, Any]:
        module, function = self.runner.split(":")
        runner = getattr(importlib.import_module(module), function)
        try:
            return runner(context)
        except Exception as err:
            # A row's UsageError raised in a Ray worker arrives wrapped (RayTaskError, with
            # the worker's traceback as its text), and Ray Data appends its retry advice to the
            # message: raise the original kind with its own first line.
            cause = one_line_cause(err, (UsageError, StageFailed))
            if cause is None or cause is err:
                raise
            raise type(cause)(str(cause).splitlines()[0]) from None


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "build chat prompts for the task -> prompts/", "prompts", (),
          lambda c: [c.data, c.run.seed], "kdist.stages.prepare:run",
          sources=lambda c: {**_data_sources(c), **_model_sources(_writer(c))}, endpoints=lambda c: _writer(c), atomic=True),
    Stage("generate", "have the teacher answer every prompt -> responses/", "responses", ("prepare",),
          lambda c: [c.teacher], "kdist.stages.generate:run",
          sources=lambda c: _model_sources({"teacher": c.teacher}), endpoints=lambda c: {"teacher": c.teacher}),
    Stage("judge", "score the teacher's answers -> judgements/", "judgements", ("prepare", "generate"),
          lambda c: [c.judge], "kdist.stages.judge:run",
          sources=lambda c: _model_sources(_llm_judge(c)), endpoints=lambda c: _llm_judge(c)),
    Stage("filter", "keep the good answers -> sft/train, sft/validation", "sft", ("prepare", "generate", "judge"),
          lambda c: [c.judge.min_score], "kdist.stages.filter:run"),
    Stage("train", "fine-tune the student on them with Ray Train + DeepSpeed or a hosted service -> student/", "student",
          ("prepare", "filter"), lambda c: [c.student, c.train, c.run.seed], "kdist.stages.train:run",
          sources=lambda c: {} if c.train.hosted else {"student.model": c.student.model},
          endpoints=lambda c: {"train.hosted": c.train.hosted} if c.train.hosted else {}),
    Stage("evaluate", "student vs base vs teacher on held-out data -> eval/", "eval", ("prepare", "generate", "train"),
          lambda c: [c.evaluate, c.student.model, evaluation_judge(c)], "kdist.stages.evaluate:run",
          sources=lambda c: {"student.model": c.student.model, **_model_sources(_evaluation_endpoints(c))},
          endpoints=lambda c: _evaluation_endpoints(c)),
)  # fmt: skip


def _data_sources(config: RunConfig) -> dict[str, str]:
    """The data path, and a Hugging Face source's data files: a changed data file must make
    `--resume` prepare again."""
    source = config.data.source
    found = {"data.source.path": source.path} if getattr(source, "path", None) else {}
    files = getattr(source, "data_files", None)
    if isinstance(files, dict):
        files = [f for group in files.values() for f in ([group] if isinstance(group, str) else group)]
    for index, location in enumerate([files] if isinstance(files, str) else files or []):
        if not any(char in location for char in "*?["):  # a glob is the datasets library's to expand
            found[f"data.source.data_files[{index}]"] = location
    return found


def _writer(config: RunConfig) -> dict[str, Endpoint]:
    """The model that writes a generated source's rows (questions, follow-up turns)."""
    writer = getattr(config.data.source, "writer", None)
    return {"data.source.writer": writer} if writer is not None else {}


def _llm_judge(config: RunConfig) -> dict[str, Endpoint]:
    return {} if config.judge.kind == "rule" else {"judge": config.judge}


def evaluation_judge(config: RunConfig) -> Endpoint | None:
    """The pairwise judge of evaluate: `evaluate.judge`, else the run's judge when it is a model."""
    if config.evaluate.judge is not None:
        return config.evaluate.judge
    return None if config.judge.kind == "rule" else config.judge


def _evaluation_endpoints(config: RunConfig) -> dict[str, Endpoint]:
    judge = evaluation_judge(config) if config.evaluate.comparisons else None
    found = {"evaluate.judge": judge} if judge is not None else {}
    return {**found, **{f"evaluate.models.{m.name}": m.endpoint for m in config.evaluate.models if m.endpoint is not None}}


def _model_sources(endpoints: dict[str, Endpoint]) -> dict[str, str]:
    """The models of endpoints that load weights in the cluster (a remote one has none here)."""
    return {f"{role}.model": ep.model for role, ep in endpoints.items() if not isinstance(ep, RemoteEndpoint)}


BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
STAGE_NAMES: tuple[str, ...] = tuple(BY_NAME)
# What a RayJob or `ray_jobs/run.py` may run: one stage, every stage, or the offline demo.
JOB_COMMANDS: tuple[str, ...] = ("run", *STAGE_NAMES, "demo")
