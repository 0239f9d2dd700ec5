"""The evaluate stage: every model of `evaluate.models` on the held-out split, compared.

Each model answers through the batch-inference layer (kdist.llm.batch) into eval/answers/,
keyed (id, model), so an interrupted evaluation resumes and a paid model is paid for once:
base and student are served as `evaluate.kind` (transformers, or vLLM engines on the cluster),
any other model at its own endpoint (a hosted fine-tuned model, whose name the train stage may
have written to a file in its output). The teacher's answers for the split come from the
generate stage, so a paid teacher is asked once; `teacher_sample` prompts may be asked again
only to time it. The task library scores the answers, the pairwise judge compares the pairs
of `evaluate.comparisons` in both orders (kdist.judging.compare: it never sees the reference).
The held-out split is small: its rows are scored in the driver. The figures, plots and
report.md are kdist.reporting's, built from the files written here.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kdist import storage
from kdist.config import EvaluatedModel, RunConfig
from kdist.endpoints import Endpoint, HFEndpoint, RemoteEndpoint, VLLMEndpoint
from kdist.errors import UsageError
from kdist.judging.compare import compare
from kdist.llm.batch import run_inference
from kdist.llm.store import ResponseStore
from kdist.reporting import report
from kdist.rows import PROMPT_SCHEMA
from kdist.stages import StageContext, evaluation_judge
from kdist.tasks import Task, task_for

log = logging.getLogger(__name__)

ANSWERS_DIR = "answers"
JUDGE_DIR = "judge"
TEACHER_SAMPLE = "teacher_sample"
STUDENT_ENDPOINTS: dict[str, type[Endpoint]] = {"hf": HFEndpoint, "vllm": VLLMEndpoint}
ANSWER_COLUMNS = ["id", "candidate", "model", "response", "error", "seconds", "prompt_tokens", "completion_tokens"]


def run(context: StageContext) -> dict[str, Any]:
    config, out = context.config, context.dir("evaluate")
    prompts = _labelled_prompts(context.dir("prepare"), config.evaluate.split)
    task = task_for(config.data.task)
    answers, models, wall = {}, {}, {}
    for model in config.evaluate.models:
        endpoint = model_endpoint(context, model)
        if endpoint is None:  # the teacher, answered in generate
            answers[model.name] = _stored(ResponseStore(context.dir("generate")), prompts["id"], "teacher")
            models[model.name] = _described(config.teacher, "generate (stored)")
            _warn_missing(model.name, answers[model.name], prompts.num_rows)
        else:
            answers[model.name], wall[model.name] = _answer(prompts, model.name, endpoint, storage.join(out, ANSWERS_DIR))
            models[model.name] = _described(endpoint, "evaluate")
    timed = {name: list(rows.values()) for name, rows in answers.items()}
    if config.evaluate.teacher_sample and "teacher" in models and "teacher" not in wall:
        timed["teacher"], wall["teacher"] = _teacher_sample(config, prompts, storage.join(out, ANSWERS_DIR))
        models["teacher"]["answers_from"] += f"; timed on {len(timed['teacher'])} prompts asked again"
    results = [_result(task, prompt, name, answers[name].get(prompt["id"]))
               for name in models for prompt in prompts.to_pylist()]  # fmt: skip
    storage.write_table(storage.join(out, report.RESULTS), pa.Table.from_pylist(results, schema=report.RESULT_SCHEMA))
    storage.write_table(storage.join(out, report.SPEED), _speed_rows(timed))
    judge, compared = _judged(context, prompts, answers, out)
    storage.write_json(storage.join(out, report.FACTS), {
        "split": config.evaluate.split, "rows": prompts.num_rows, "task": task.name, "headline": task.headline,
        "models": models, "metrics": _task_metrics(task, prompts, results), "chance": task.chance(_metas(prompts)),
        "judge": judge, "compared": compared, "wall": wall, "seed": config.run.seed,
        "worst_rows": config.evaluate.worst_rows,
    })  # fmt: skip
    metrics = report.build(out, context.dir("train"))
    log.info("evaluate on %s (%d rows): %s", config.evaluate.split, prompts.num_rows, metrics["accuracy"])
    return {key: metrics[key] for key in ("split", "rows", "accuracy", "recovered")}


def student_endpoint(config: RunConfig, model: str) -> Endpoint:
    section = config.evaluate
    return STUDENT_ENDPOINTS[section.kind](
        model=model, sampling=section.sampling, batch_size=section.batch_size, replicas=section.replicas
    )


def model_endpoint(context: StageContext, model: EvaluatedModel) -> Endpoint | None:
    """Where `model` answers; None for the teacher's stored answers."""
    config = context.config
    if model.endpoint is None:
        if model.name == "teacher":
            return None
        trained = {"base": config.student.model, "student": storage.join(context.dir("train"), "model")}
        return student_endpoint(config, trained[model.name])
    if model.model_file is None:
        return model.endpoint
    path = storage.join(context.dir("train"), model.model_file)
    if not storage.exists(path):
        raise UsageError(f"evaluate.models '{model.name}': model_file {path} does not exist (the train stage writes it)")
    name = storage.read_json(path).get("model")
    if not isinstance(name, str) or not name:
        raise UsageError(f"evaluate.models '{model.name}': {path} has no 'model' name")
    return model.endpoint.model_copy(update={"model": name})


def _labelled_prompts(prompts_uri: str, split: str) -> pa.Table:
    prompts = storage.read_table(prompts_uri, schema=PROMPT_SCHEMA)
    prompts = prompts.filter(pc.and_(pc.equal(prompts["split"], split), pc.is_valid(prompts["reference"])))
    if not prompts.num_rows:
        raise UsageError(f"evaluate.split '{split}' has no labelled prompts")
    return prompts


def _answer(prompts: pa.Table, name: str, endpoint: Endpoint, store_uri: str) -> tuple[dict[str, dict], dict | None]:
    """`name`'s answers, and the wall time and tokens of what this run asked (None if nothing)."""
    import ray.data

    table = pa.table({"id": prompts["id"], "candidate": pa.array([name] * prompts.num_rows, pa.string()),
                      "messages": prompts["messages"]})  # fmt: skip
    started = time.monotonic()
    result = run_inference(ray.data.from_arrow(table), endpoint, store_uri, expected_rows=prompts.num_rows, label=f"evaluate {name}")
    asked = result.summary["this_run"]
    wall = {"seconds": time.monotonic() - started, "completion_tokens": asked["completion_tokens"]} if asked["requested"] else None
    return _stored(result.store, prompts["id"], name), wall


def _teacher_sample(config: RunConfig, prompts: pa.Table, store_uri: str) -> tuple[list[dict], dict | None]:
    sample = prompts.slice(0, config.evaluate.teacher_sample)
    answers, wall = _answer(sample, TEACHER_SAMPLE, config.teacher, store_uri)
    return list(answers.values()), wall


def _stored(store: ResponseStore, ids: pa.ChunkedArray, candidate: str) -> dict[str, dict[str, Any]]:
    rows = store.read_all(ANSWER_COLUMNS)
    rows = rows.filter(pc.and_(pc.equal(rows["candidate"], candidate), pc.is_in(rows["id"], value_set=ids)))
    return {row["id"]: row for row in rows.to_pylist() if row["error"] is None}


def _warn_missing(name: str, answers: dict[str, Any], rows: int) -> None:
    if len(answers) < rows:
        log.warning("%s has no answer for %d evaluation rows (add the split to teacher.splits); they count as wrong",
                    name, rows - len(answers))  # fmt: skip


def _described(endpoint: Endpoint, answers_from: str) -> dict[str, Any]:
    prices = endpoint.prices.model_dump() if isinstance(endpoint, RemoteEndpoint) and endpoint.prices else None
    return {"label": endpoint.label, "answers_from": answers_from, "prices": prices}


def _metas(prompts: pa.Table) -> list[dict[str, Any]]:
    return [json.loads(meta) if meta else {} for meta in prompts["meta"].to_pylist()]


def _result(task: Task, prompt: dict[str, Any], model: str, answer: dict[str, Any] | None) -> dict[str, Any]:
    text = answer["response"] if answer else None
    meta = json.loads(prompt["meta"]) if prompt["meta"] else {}
    parsed = task.parse(text, meta)
    score = task.score(parsed, prompt["reference"], meta)  # labelled rows only (_labelled_prompts)
    return {"id": prompt["id"], "model": model, "prompt": prompt["messages"][-1]["content"], "response": text,
            "answer": parsed, "reference": prompt["reference"], "score": score, "correct": score >= 1.0 - 1e-9}  # fmt: skip


def _task_metrics(task: Task, prompts: pa.Table, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The task's own metrics (accuracy, ROUGE, exact match and F1, agreement...) per model."""
    metas = dict(zip(prompts["id"].to_pylist(), _metas(prompts)))
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in results:
        by_model.setdefault(row["model"], []).append(row)
    return {model: task.metrics([r["answer"] for r in rows], [r["reference"] for r in rows], [metas[r["id"]] for r in rows])
            for model, rows in by_model.items()}  # fmt: skip


def _speed_rows(timed: dict[str, list[dict[str, Any]]]) -> pa.Table:
    rows = [{"model": name, **{key: a[key] for key in ("seconds", "prompt_tokens", "completion_tokens")}}
            for name, answers in timed.items() for a in answers]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=report.SPEED_SCHEMA)


def _judged(context: StageContext, prompts: pa.Table, answers: dict[str, dict], out: str) -> tuple[str | None, list[list[str]]]:
    """Run the comparisons of evaluate.comparisons; writes comparisons.parquet. Returns the
    judge's label and the pairs compared (none without a model judge)."""
    judge = evaluation_judge(context.config)
    pairs = context.config.evaluate.comparisons
    if judge is None or not pairs:
        log.info("evaluate: no model judge (evaluate.judge, or a model as judge): no pairwise comparisons")
        return None, []
    # The top-level judge's template is a grading rubric's; only evaluate.judge's is pairwise.
    template = context.config.evaluate.judge.template if context.config.evaluate.judge else None
    prompt_rows = prompts.select(["id", "messages", "meta"]).to_pylist()
    rows = []
    for first, second in pairs:
        both = [{**p, "answers": {first: answers[first][p["id"]]["response"], second: answers[second][p["id"]]["response"]}}
                for p in prompt_rows if p["id"] in answers[first] and p["id"] in answers[second]]  # fmt: skip
        if not both:
            log.warning("evaluate: %s and %s answered no prompt both: nothing to compare", first, second)
            continue
        # One judge store for every comparison, keyed by pair and order: a prompt two
        # comparisons render alike is asked once (the batch layer copies its answer).
        _, compared = compare(both, first, second, judge, storage.join(out, JUDGE_DIR),
                              template=template, seed=context.config.run.seed)  # fmt: skip
        lengths = {p["id"]: len(p["answers"][first]) - len(p["answers"][second]) for p in both}
        rows += [{"id": c.id, "first": first, "second": second, "verdict_in_order": c.verdict_in_order,
                  "verdict_swapped": c.verdict_swapped, "outcome": c.outcome, "flipped": c.flipped,
                  "length_difference": lengths[c.id], "rationale": c.rationale} for c in compared]  # fmt: skip
    storage.write_table(storage.join(out, report.COMPARISONS), pa.Table.from_pylist(rows, schema=report.COMPARISON_SCHEMA))
    return judge.label, [list(pair) for pair in pairs]
