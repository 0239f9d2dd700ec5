"""The evaluate stage: base student, teacher and distilled student on the held-out split.

The students answer with local generation (one Ray task per model, so they run side by side
on the cluster); the teacher's answers for the held-out split come from the generate stage,
so a remote teacher is paid for once and any backend can be compared. Writes per-row results,
metrics.json and report.md with a plot to eval/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from kdist import io
from kdist.config import RunConfig, SamplingSection
from kdist.data.tasks import LETTERS, parse_choice
from kdist.rows import PROMPT_SCHEMA, RESPONSE_SCHEMA
from kdist.runtime import resolve_model

log = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("model", pa.string()),
        ("response", pa.string()),
        ("answer", pa.string()),
        ("reference", pa.string()),
        ("correct", pa.bool_()),
    ]
)


def run_evaluate(
    config: RunConfig, prompts_path: Path, responses_path: Path, student_dir: Path, out_dir: Path
) -> dict[str, Any]:
    split = config.evaluate.split
    prompts = [
        row
        for row in io.read_table(prompts_path, schema=PROMPT_SCHEMA).to_pylist()
        if row["split"] == split and row["reference"]
    ]
    if not prompts:
        raise ValueError(f"evaluate.split '{split}' has no labelled prompts")
    results = _teacher_results(responses_path, prompts)
    models = {"base": resolve_model(config.student.model), "student": str(student_dir / "model")}
    results += _student_results(config, prompts, models)
    io.write_table(out_dir / "results.parquet", pa.Table.from_pylist(results, schema=RESULT_SCHEMA))
    accuracy = _accuracy_by_model(results)
    metrics = {"accuracy": accuracy, "split": split, "rows": len(prompts)}
    io.write_json(out_dir / "metrics.json", metrics)
    _write_report(out_dir, metrics)
    log.info("evaluate on %s (%d rows): %s", split, len(prompts), accuracy)
    return metrics


def _teacher_results(responses_path: Path, prompts: list[dict]) -> list[dict[str, Any]]:
    responses = {r["id"]: r for r in io.read_table(responses_path, schema=RESPONSE_SCHEMA).to_pylist()}
    missing = [p["id"] for p in prompts if p["id"] not in responses]
    if missing:
        log.warning("teacher has no answer for %d evaluation rows (add the split to "
                    "teacher.splits); they count as wrong", len(missing))
    return [
        _result(p, "teacher", responses.get(p["id"], {}).get("response"))
        for p in prompts
    ]


def _student_results(config: RunConfig, prompts, models: dict[str, str]) -> list[dict[str, Any]]:
    import ray

    answer = ray.remote(num_cpus=1)(_answer_prompts)
    sampling = SamplingSection(max_tokens=4)
    pending = {name: answer.remote(path, prompts, sampling, config.evaluate.batch_size)
               for name, path in models.items()}
    return [
        _result(prompt, name, text)
        for name, ref in pending.items()
        for prompt, text in zip(prompts, ray.get(ref))
    ]


def _answer_prompts(model_dir: str, prompts, sampling: SamplingSection, batch_size: int):
    from kdist.teachers.base import ChatRequest
    from kdist.teachers.hf import HFTeacher

    generator = HFTeacher(model_dir, sampling)
    texts: list[str | None] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        requests = [ChatRequest(p["id"], p["messages"], "") for p in chunk]
        texts += [r.response for r in generator.generate(requests)]
    return texts


def _result(prompt: dict, model: str, text: str | None) -> dict[str, Any]:
    choices = json.loads(prompt["meta"]).get("choices", [])
    answer = parse_choice(text, LETTERS[: len(choices) or 5])
    return {"id": prompt["id"], "model": model, "response": text, "answer": answer,
            "reference": prompt["reference"], "correct": answer == prompt["reference"]}


def _accuracy_by_model(results: list[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for row in results:
        right_total = totals.setdefault(row["model"], [0, 0])
        right_total[0] += row["correct"]
        right_total[1] += 1
    return {model: round(right / total, 4) for model, (right, total) in totals.items()}


def _write_report(out_dir: Path, metrics: dict[str, Any]) -> None:
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
    with io.atomic_path(out_dir / "accuracy.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
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
    ]
    io.write_text(out_dir / "report.md", "\n".join(lines))
