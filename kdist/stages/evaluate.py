"""The evaluate stage: base student, teacher and distilled student on the held-out split.

The students answer through the batch-inference layer (kdist.llm.batch) as endpoints of
`evaluate.kind` (transformers, or vLLM engines on the cluster), into eval/answers/ keyed
(id, model), so an interrupted evaluation resumes; the teacher's answers for the held-out split
come from the generate stage, so a remote teacher is paid for once and any backend can be
compared. The held-out split is small: its rows are scored in the driver. Writes per-row
results, metrics.json and report.md with a plot to eval/.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kdist import storage
from kdist.config import RunConfig
from kdist.endpoints import Endpoint, HFEndpoint, VLLMEndpoint
from kdist.errors import UsageError
from kdist.llm.batch import run_inference
from kdist.llm.store import ResponseStore
from kdist.rows import PROMPT_SCHEMA
from kdist.stages import StageContext
from kdist.tasks import Task, task_for

log = logging.getLogger(__name__)

ANSWERS_DIR = "answers"
STUDENT_ENDPOINTS: dict[str, type[Endpoint]] = {"hf": HFEndpoint, "vllm": VLLMEndpoint}

RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("model", pa.string()),
        ("response", pa.string()),
        ("answer", pa.string()),
        ("reference", pa.string()),
        ("score", pa.float64()),  # the task's score in [0, 1] (kdist.tasks)
        ("correct", pa.bool_()),  # score 1
    ]
)


def run(context: StageContext) -> dict[str, Any]:
    config = context.config
    split, out = config.evaluate.split, context.dir("evaluate")
    prompts = _labelled_prompts(context.dir("prepare"), split)
    answers = {"teacher": _stored_answers(ResponseStore(context.dir("generate")), prompts, "teacher")}
    models = {"base": config.student.model, "student": storage.join(context.dir("train"), "model")}
    store_uri = storage.join(out, ANSWERS_DIR)
    for name, model in models.items():
        run_inference(_requests(prompts, name), student_endpoint(config, model), store_uri,
                      expected_rows=prompts.num_rows, label=f"evaluate {name}")  # fmt: skip
        answers[name] = _stored_answers(ResponseStore(store_uri), prompts, name)
    task = task_for(config.data.task)
    results = [_result(task, prompt, name, answers[name].get(prompt["id"]))
               for name in ("teacher", *models) for prompt in prompts.to_pylist()]  # fmt: skip
    storage.write_table(storage.join(out, "results.parquet"), pa.Table.from_pylist(results, schema=RESULT_SCHEMA))
    accuracy = _accuracy_by_model(results)
    metrics = {"accuracy": accuracy, "split": split, "rows": prompts.num_rows, "task": task.name,
               "headline": task.headline, "metrics": _task_metrics(task, prompts, results)}  # fmt: skip
    storage.write_json(storage.join(out, "metrics.json"), metrics)
    _write_report(out, metrics)
    log.info("evaluate on %s (%d rows): %s", split, prompts.num_rows, accuracy)
    return metrics


def student_endpoint(config: RunConfig, model: str) -> Endpoint:
    section = config.evaluate
    return STUDENT_ENDPOINTS[section.kind](
        model=model, sampling=section.sampling, batch_size=section.batch_size, replicas=section.replicas
    )


def _labelled_prompts(prompts_uri: str, split: str) -> pa.Table:
    prompts = storage.read_table(prompts_uri, schema=PROMPT_SCHEMA)
    prompts = prompts.filter(pc.and_(pc.equal(prompts["split"], split), pc.is_valid(prompts["reference"])))
    if not prompts.num_rows:
        raise UsageError(f"evaluate.split '{split}' has no labelled prompts")
    return prompts


def _requests(prompts: pa.Table, candidate: str) -> Any:
    import ray.data

    table = pa.table({"id": prompts["id"], "candidate": pa.array([candidate] * prompts.num_rows, pa.string()),
                      "messages": prompts["messages"]})  # fmt: skip
    return ray.data.from_arrow(table)


def _stored_answers(store: ResponseStore, prompts: pa.Table, candidate: str) -> dict[str, str | None]:
    rows = store.read_all(["id", "candidate", "response", "error"])
    rows = rows.filter(pc.and_(pc.equal(rows["candidate"], candidate), pc.is_in(rows["id"], value_set=prompts["id"])))
    found = {row["id"]: row["response"] for row in rows.to_pylist() if row["error"] is None}
    if candidate == "teacher" and len(found) < prompts.num_rows:
        log.warning("teacher has no answer for %d evaluation rows (add the split to "
                    "teacher.splits); they count as wrong", prompts.num_rows - len(found))  # fmt: skip
    return found


def _result(task: Task, prompt: dict[str, Any], model: str, text: str | None) -> dict[str, Any]:
    meta = json.loads(prompt["meta"]) if prompt["meta"] else {}
    answer = task.parse(text, meta)
    score = task.score(answer, prompt["reference"], meta)  # labelled rows only (_labelled_prompts)
    return {"id": prompt["id"], "model": model, "response": text, "answer": answer,
            "reference": prompt["reference"], "score": score, "correct": score >= 1.0 - 1e-9}


def _task_metrics(task: Task, prompts: pa.Table, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The task's own metrics (ROUGE, exact match and F1, agreement...) for each model."""
    metas = {row["id"]: json.loads(row["meta"]) if row["meta"] else {} for row in prompts.select(["id", "meta"]).to_pylist()}
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in results:
        by_model.setdefault(row["model"], []).append(row)
    return {model: task.metrics([r["answer"] for r in rows], [r["reference"] for r in rows], [metas[r["id"]] for r in rows])
            for model, rows in by_model.items()}  # fmt: skip


def _accuracy_by_model(results: list[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for row in results:
        right_total = totals.setdefault(row["model"], [0, 0])
        right_total[0] += row["correct"]
        right_total[1] += 1
    return {model: round(right / total, 4) for model, (right, total) in totals.items()}


def _write_report(out_dir: str, metrics: dict[str, Any]) -> None:
    import io
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy = metrics["accuracy"]
    order = [m for m in ("base", "student", "teacher") if m in accuracy]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(order, [accuracy[m] for m in order], color=["#999999", "#2a7ab9", "#e07b39"][: len(order)])
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"accuracy on {metrics['split']}")
    ax.axhline(0.2, linestyle="--", color="black", linewidth=0.8, label="chance (5 choices)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(storage.join(out_dir, "accuracy.png"), png.getvalue())
    lines = [
        "# Evaluation",
        "",
        f"{metrics['rows']} held-out rows of split `{metrics['split']}`.",
        "",
        "| model | accuracy |",
        "|---|---|",
        *[f"| {m} | {accuracy[m]:.3f} |" for m in order],
        "",
        "![accuracy](accuracy.png)",
        "",
        *_task_metrics_table(metrics, order),
    ]
    storage.write_text(storage.join(out_dir, "report.md"), "\n".join(lines))


def _task_metrics_table(metrics: dict[str, Any], order: list[str]) -> list[str]:
    per_model = metrics.get("metrics") or {}
    names = list(next(iter(per_model.values()), {}))
    if not names:
        return []
    shown = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    return [f"Task `{metrics['task']}` metrics (headline: {metrics['headline']}):", "",
            "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
            *[f"| {m} | " + " | ".join(shown(per_model[m].get(n)) for n in names) + " |" for m in order if m in per_model], ""]  # fmt: skip
