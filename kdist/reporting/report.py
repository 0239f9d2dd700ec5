"""metrics.json, report.md and the plots, built from the evaluation's files alone.

The evaluate stage writes what only it can know into eval/: `evaluation.json` (split, task,
the models and where their answers came from, prices, the task's metrics per model, chance,
the judge, the wall time of each model's answering), `results.parquet` (one row per prompt and
model), `comparisons.parquet` (one row per prompt and comparison: both orders' verdicts, the
combined outcome, the judge's words) and `speed.parquet` (the answers timed). `build` derives
everything else from those and the training metrics (student/metrics.jsonl), so `kdist report
RUN_DIR` rebuilds the same report without asking any model.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from kdist import storage
from kdist.judging.pairwise import summarize
from kdist.reporting import plots
from kdist.reporting.scores import judge_accuracy, recovered_share, worst_rows
from kdist.reporting.speed import serving_speed

FACTS = "evaluation.json"
RESULTS = "results.parquet"
COMPARISONS = "comparisons.parquet"
SPEED = "speed.parquet"
METRICS = "metrics.json"
REPORT = "report.md"
TRAINING_METRICS = "metrics.jsonl"

RESULT_SCHEMA = pa.schema([
    ("id", pa.string()), ("model", pa.string()), ("prompt", pa.string()), ("response", pa.string()),
    ("answer", pa.string()), ("reference", pa.string()),
    ("score", pa.float64()),  # the task's score in [0, 1] (kdist.tasks)
    ("correct", pa.bool_()),  # score 1
])  # fmt: skip
COMPARISON_SCHEMA = pa.schema([
    ("id", pa.string()), ("first", pa.string()), ("second", pa.string()),
    ("verdict_in_order", pa.string()), ("verdict_swapped", pa.string()),
    ("outcome", pa.string()),  # first | second | tie | null (no readable verdict)
    ("flipped", pa.bool_()), ("length_difference", pa.int64()), ("rationale", pa.string()),
])  # fmt: skip
SPEED_SCHEMA = pa.schema([
    ("model", pa.string()), ("seconds", pa.float64()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
])  # fmt: skip


def comparison_key(first: str, second: str) -> str:
    return f"{first}_vs_{second}"


def build(eval_dir: str, train_dir: str | None = None) -> dict[str, Any]:
    """Write metrics.json, report.md and the PNGs into `eval_dir`; returns the metrics."""
    facts = storage.read_json(storage.join(eval_dir, FACTS))
    results = storage.read_table(storage.join(eval_dir, RESULTS), schema=RESULT_SCHEMA).to_pylist()
    compared = _read_optional(storage.join(eval_dir, COMPARISONS), COMPARISON_SCHEMA)
    timed = _read_optional(storage.join(eval_dir, SPEED), SPEED_SCHEMA)
    training = _training_records(train_dir)
    metrics = _metrics(facts, results, compared, timed, training)
    storage.write_json(storage.join(eval_dir, METRICS), metrics)
    figures = _plots(eval_dir, metrics, training)
    storage.write_text(storage.join(eval_dir, REPORT), render(metrics, results, compared, figures))
    return metrics


def _read_optional(uri: str, schema: pa.Schema) -> list[dict[str, Any]]:
    return storage.read_table(uri, schema=schema).to_pylist() if storage.exists(uri) else []


def _training_records(train_dir: str | None) -> list[dict[str, Any]]:
    uri = storage.join(train_dir, TRAINING_METRICS) if train_dir else None
    if uri is None or not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]


def _metrics(facts: dict[str, Any], results: list[dict[str, Any]], compared: list[dict[str, Any]],
             timed: list[dict[str, Any]], training: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    models = list(facts["models"])
    by_model = {m: [r for r in results if r["model"] == m] for m in models}
    recovered, notes = recovered_share(facts["metrics"])
    return {
        "split": facts["split"], "rows": facts["rows"], "task": facts["task"], "headline": facts["headline"],
        "models": facts["models"],
        "accuracy": {m: round(sum(r["correct"] for r in rows) / len(rows), 4) for m, rows in by_model.items() if rows},
        "metrics": facts["metrics"], "chance": facts["chance"],
        "recovered": recovered, "recovered_notes": notes,
        "judge": facts.get("judge"),
        "comparisons": _comparisons(facts, results, compared),
        "speed": {m: serving_speed([t for t in timed if t["model"] == m], facts["wall"].get(m),
                                   facts["models"][m].get("prices")) for m in models},  # fmt: skip
        "training": _training_summary(training),
        "worst_rows": worst_rows(results, facts.get("worst_rows", 10)),
        "notes": facts.get("notes", []),
    }  # fmt: skip


def _comparisons(facts: dict[str, Any], results: list[dict[str, Any]], compared: list[dict[str, Any]]) -> dict[str, Any]:
    correct = {(r["id"], r["model"]): r["correct"] for r in results}
    summaries: dict[str, Any] = {}
    for first, second in facts.get("compared", []):
        rows = [c for c in compared if c["first"] == first and c["second"] == second]
        result = summarize([c["outcome"] for c in rows], [c["flipped"] for c in rows],
                           [c["length_difference"] for c in rows], seed=facts.get("seed", 0))  # fmt: skip
        summaries[comparison_key(first, second)] = {
            "first": first, "second": second,
            "win_rate": _rounded(result.win_rate), "tie_rate": _rounded(result.tie_rate),
            "flip_rate": _rounded(result.flip_rate),
            "ci": [round(v, 4) for v in result.win_rate_ci] if result.win_rate_ci else None,
            "length_controlled_win_rate": _rounded(result.length_controlled_win_rate),
            "n": result.comparisons - result.invalid,
            "judge_accuracy": judge_accuracy([c["outcome"] for c in rows],
                                             [bool(correct.get((c["id"], first))) for c in rows],
                                             [bool(correct.get((c["id"], second))) for c in rows]),
            "wins": result.wins, "ties": result.ties, "losses": result.losses, "flips": result.flips,
            "invalid": result.invalid,
        }  # fmt: skip
    return summaries


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _training_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not records:
        return None
    losses = [r for r in records if r.get("loss") is not None]
    validated = [r for r in records if r.get("val_loss") is not None]
    return {
        "steps": records[-1].get("step"),
        "first_loss": _rounded(losses[0]["loss"]) if losses else None,
        "final_loss": _rounded(losses[-1]["loss"]) if losses else None,
        "final_val_loss": _rounded(validated[-1]["val_loss"]) if validated else None,
    }


def _plots(eval_dir: str, metrics: dict[str, Any], training: list[dict[str, Any]]) -> dict[str, str]:
    figures = {"metrics": "metrics.png"}
    plots.metric_bars(metrics["metrics"], metrics["chance"], storage.join(eval_dir, figures["metrics"]))
    if metrics["comparisons"]:
        figures["judge"] = "judge.png"
        plots.judge_bars(metrics["comparisons"], storage.join(eval_dir, figures["judge"]))
    if training:
        figures["loss"] = "loss.png"
        plots.loss_curves(training, storage.join(eval_dir, figures["loss"]))
    return figures


# --- report.md ---------------------------------------------------------------------------------


def number(value: Any, places: int = 3) -> str:
    """How every figure is shown in the report (tests read them back)."""
    return "-" if value is None else f"{value:.{places}f}"


def render(metrics: dict[str, Any], results: list[dict[str, Any]], compared: list[dict[str, Any]],
           figures: dict[str, str]) -> str:  # fmt: skip
    lines = [
        "# Evaluation: can the distilled student replace the teacher?", "",
        f"{metrics['rows']} labelled rows of split `{metrics['split']}`, task `{metrics['task']}` "
        f"(headline metric: {metrics['headline']}).", "",
        *_models_section(metrics), *_metrics_section(metrics, figures), *_judge_section(metrics, figures),
        *_speed_section(metrics), *_training_section(metrics, figures), *_worst_section(metrics, results, compared),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _models_section(metrics: dict[str, Any]) -> list[str]:
    rows = [f"- **{name}**: `{info['label']}` (answers from {info['answers_from']})" for name, info in metrics["models"].items()]
    return ["## Models", "", *rows, ""]


def _metrics_section(metrics: dict[str, Any], figures: dict[str, str]) -> list[str]:
    per_model = metrics["metrics"]
    names = list(next(iter(per_model.values()), {}))
    header = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows = [f"| {m} | " + " | ".join(number(values.get(n)) for n in names) + " |" for m, values in per_model.items()]
    if metrics["chance"]:
        rows.append("| chance | " + " | ".join(number(metrics["chance"].get(n)) for n in names) + " |")
    if metrics["recovered"]:
        rows.append("| recovered share | " + " | ".join(number(metrics["recovered"].get(n)) for n in names) + " |")
    notes = [f"- {name}: {note}" for name, note in metrics["recovered_notes"].items()]
    return ["## Task metrics", "", *header, *rows, "",
            "Recovered share: (student - base) / (teacher - base), the part of the teacher's gain over the "
            "base that distillation kept.", *([""] + notes if notes else []), "",
            f"![task metrics]({figures['metrics']})", ""]  # fmt: skip


def _judge_section(metrics: dict[str, Any], figures: dict[str, str]) -> list[str]:
    comparisons = metrics["comparisons"]
    if not comparisons:
        return ["## Judge comparisons", "", "None: no model judge configured (evaluate.judge, or a model as `judge`).", ""]
    rows = [
        f"| {key} | {c['n']} | {number(c['win_rate'])} | {_interval(c['ci'])} | {number(c['tie_rate'])} | "
        f"{number(c['flip_rate'])} | {number(c['length_controlled_win_rate'])} | {number(c['judge_accuracy'])} |"
        for key, c in comparisons.items()
    ]
    return ["## Judge comparisons", "",
            f"Judge `{metrics['judge']}`, every pair shown in both orders: a model wins only when both orders "
            "pick it; orders that disagree are a tie and a flip. Win rate over non-tied comparisons; judge "
            "accuracy: how often the verdict picks the right answer where exactly one of the two is right "
            "by the labels. The judge never sees the reference answers.", "",
            "| comparison | n | win rate | 95% CI | tie rate | flip rate | length-controlled win rate | judge accuracy |",
            "|---|---|---|---|---|---|---|---|", *rows, "", f"![win / tie / loss]({figures['judge']})", ""]  # fmt: skip


def _interval(ci: list[float] | None) -> str:
    return "-" if ci is None else f"{number(ci[0])} - {number(ci[1])}"


def _speed_section(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for model, s in metrics["speed"].items():
        latency = s["latency_s"] or {}
        cost = "-" if s["cost_per_1000_answers"] is None else f"{number(s['cost_per_1000_answers'], 4)} {s['currency']}"
        rows.append(f"| {model} | {s['answers']} | {number(latency.get('p50'))} | {number(latency.get('p90'))} | "
                    f"{number(s['tokens_per_s'], 1)} | {cost} |")  # fmt: skip
    return ["## Serving speed", "",
            "Latency per answer in seconds (an in-process model answers a batch at once: each answer "
            "carries its batch's time); tokens/s over the wall time of the answering, model start included; "
            "cost from the endpoint's configured prices.", "",
            "| model | answers timed | latency p50 | latency p90 | tokens/s | cost per 1,000 answers |",
            "|---|---|---|---|---|---|", *rows, ""]  # fmt: skip


def _training_section(metrics: dict[str, Any], figures: dict[str, str]) -> list[str]:
    training = metrics["training"]
    if not training:
        return []
    return ["## Training", "",
            f"{training['steps']} steps; training loss {number(training['first_loss'])} -> "
            f"{number(training['final_loss'])}, last validation loss {number(training['final_val_loss'])}.", "",
            f"![loss curves]({figures['loss']})", ""]  # fmt: skip


def _worst_section(metrics: dict[str, Any], results: list[dict[str, Any]], compared: list[dict[str, Any]]) -> list[str]:
    if not metrics["worst_rows"]:
        return []
    by_key = {(r["id"], r["model"]): r for r in results}
    lines = ["## Worst rows", "", "Where the student falls furthest below the teacher (or the reference).", ""]
    for row_id in metrics["worst_rows"]:
        student = by_key[(row_id, "student")]
        lines += [f"### `{row_id}`", "", f"> {_short(student['prompt'], 400)}", "",
                  f"- reference: `{_short(student['reference'])}`"]  # fmt: skip
        for model in metrics["models"]:
            if (row_id, model) in by_key:
                row = by_key[(row_id, model)]
                lines.append(f"- {model}: `{_short(row['response'])}` -> parsed `{row['answer']}`, score {number(row['score'])}")
        for c in compared:
            if c["id"] == row_id and "student" in (c["first"], c["second"]):
                lines.append(f"- judge, {c['first']} vs {c['second']}: {c['outcome'] or 'no verdict'}"
                             f"{' (flip)' if c['flipped'] else ''}: {_short(c['rationale'], 300)}")  # fmt: skip
        lines.append("")
    return lines


def _short(text: str | None, limit: int = 160) -> str:
    flat = " ".join((text or "").split()).replace("`", "'")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --- the terminal and several runs ---------------------------------------------------------------


def terminal_summary(metrics: dict[str, Any]) -> str:
    """A few lines for the end of `kdist run`."""
    headline = metrics["headline"]
    values = {m: v.get(headline) for m, v in metrics["metrics"].items()}
    lines = [f"{headline} on {metrics['rows']} rows of {metrics['split']}: "
             + ", ".join(f"{m} {number(v)}" for m, v in values.items())]  # fmt: skip
    share = metrics["recovered"].get(headline)
    if share is not None:
        lines.append(f"recovered share of the teacher's gain: {number(share)}")
    elif headline in metrics["recovered_notes"]:
        lines.append(f"recovered share: none ({metrics['recovered_notes'][headline]})")
    for key, c in metrics["comparisons"].items():
        lines.append(f"judge {key}: win rate {number(c['win_rate'])} (CI {_interval(c['ci'])}), "
                     f"tie {number(c['tie_rate'])}, flip {number(c['flip_rate'])}, n {c['n']}")  # fmt: skip
    return "\n".join(lines)


def compare_runs(runs: dict[str, dict[str, Any]], out_dir: str) -> str:
    """One markdown table of several runs' metrics (a row per run and model), and one plot per
    metric in `out_dir`; returns the table."""
    names = sorted({n for metrics in runs.values() for values in metrics["metrics"].values() for n in values})
    lines = ["| run | model | " + " | ".join(names) + " | recovered (" + "headline) |",
             "|---|---|" + "---|" * (len(names) + 1)]  # fmt: skip
    for run, metrics in runs.items():
        for model, values in metrics["metrics"].items():
            recovered = metrics["recovered"].get(metrics["headline"]) if model == "student" else None
            lines.append(f"| {run} | {model} | " + " | ".join(number(values.get(n)) for n in names) + f" | {number(recovered)} |")
    for name in names:
        values = {run: {m: v.get(name) for m, v in metrics["metrics"].items()} for run, metrics in runs.items()}
        plots.runs_side_by_side(values, name, storage.join(out_dir, f"compare_{name}.png"))
    table = "\n".join(lines) + "\n"
    storage.write_text(storage.join(out_dir, "compare.md"), table)
    return table
