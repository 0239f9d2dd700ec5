"""The judge stage: score every teacher answer -> judgements/scores/ (kdist.rows.JUDGEMENT_SCHEMA).

Two kinds of judge:

- `rule` (offline): an answer scores 1.0 when it parses as a valid answer for the prompt's
  task and 0.0 otherwise (error rows and unparsable text);
- an LLM judge: a model endpoint of any kind (vLLM in the cluster, an OpenAI-compatible or
  Azure AI endpoint) asked with the rubric's template (kdist.judging.rubrics) through the
  batch-inference layer, so fan-out, limits, retries and exact resume come with it; its raw
  answers are kept in judgements/answers/ (a responses store), and each is read as a score on
  the rubric's scale and a rationale. An unreadable verdict is `unparsable`, score null: never
  guessed, and never kept by the filter. Greedy by default; with `judge.samples: N` (N > 1, at
  a temperature above 0) each answer is asked N times, each sample a request of its own (the
  sample index is in its request hash) stored under (id, "<candidate>|sample-<k>"), so a rerun
  asks only for missing samples; the score is the mean of the parsable samples, the others are
  counted, and an answer without any parsable sample is unparsable.

Prompts and answers are joined by id in Ray Data and handled in the workers: the driver
holds neither.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from kdist import dataflow, storage
from kdist.errors import UsageError
from kdist.judging.rubrics import RUBRICS, conversation_text, load_template, prompt_context
from kdist.judging.verdicts import Scale, parse_grade
from kdist.llm.batch import format_summary, run_inference
from kdist.llm.store import ResponseStore
from kdist.rows import JUDGEMENT_SCHEMA, JUDGEMENTS_TABLE, REQUEST_SCHEMA
from kdist.stages import StageContext
from kdist.tasks import TaskSettings, task_for

log = logging.getLogger(__name__)

SAMPLES_PER_PARTITION = 100_000
SAMPLE_MARK = "|sample-"  # the judge store's candidate of sample k: "<candidate>|sample-<k>"
RULE_RATIONALE = {
    "ok": "answer parses for the task",
    "unparsable": "answer does not parse for the task",
    "error": "the teacher returned no answer",
}
JUDGE_ANSWERS = "answers"


def run(context: StageContext) -> dict[str, Any]:
    judge, out = context.config.judge, context.dir("judge")
    answers = ResponseStore(context.dir("generate")).dataset(["id", "candidate", "response", "error"])
    if judge.kind == "rule":
        joined = dataflow.join_stored(answers, context.dir("prepare"), ["meta"], on=("id",))
        judged = joined.map_batches(rule_judgements, fn_kwargs={"task": context.config.data.task},
                                    batch_format="pyarrow", num_cpus=0.1)  # fmt: skip
        extra: dict[str, Any] = {}
    else:
        judged, extra = _llm_judgements(context, answers)
    scores_uri = storage.join(out, JUDGEMENTS_TABLE)
    storage.write_dataset(judged, scores_uri, schema=JUDGEMENT_SCHEMA)
    return {**_counts(scores_uri, judge.min_score, getattr(judge, "samples", 1)), **extra}


def _counts(scores_uri: str, min_score: float, samples: int = 1) -> dict[str, Any]:
    statuses = storage.value_counts(scores_uri, "status")
    scores = storage.value_counts(scores_uri, "score")
    passed = sum(count for score, count in scores.items() if score is not None and score >= min_score)
    rows = sum(statuses.values())
    log.info("judge: %d of %d answers pass (score >= %s); %s", passed, rows, min_score, statuses)
    counts = {"rows": rows, "passed": passed, "unparsable": statuses.get("unparsable", 0), "errors": statuses.get("error", 0)}
    if samples > 1:
        left_out = storage.value_counts(scores_uri, "unparsable_samples")
        counts["unparsable_samples"] = sum((value or 0) * count for value, count in left_out.items())
    return counts


def rule_judgements(batch: pa.Table, task: TaskSettings) -> pa.Table:
    """1.0 for an answer that parses for the run's task (data.task), 0.0 otherwise."""
    parser, rows = task_for(task), []
    for row in batch.to_pylist():
        parsed = parser.parse_stored(row["response"], row["meta"]) if not row["error"] else None
        status = "error" if row["error"] else ("ok" if parsed is not None else "unparsable")
        score = 1.0 if status == "ok" else 0.0
        rows.append({"id": row["id"], "candidate": row["candidate"], "judge": "rule", "rubric": "rule",
                     "raw_score": score, "score": score, "status": status, "rationale": RULE_RATIONALE[status]})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=JUDGEMENT_SCHEMA)


# --- the LLM judge -------------------------------------------------------------------------------


def _llm_judgements(context: StageContext, answers: Any) -> tuple[Any, dict[str, Any]]:
    judge = context.config.judge
    load_template(judge.rubric, judge.template)  # a bad template fails here, before any request
    joined = dataflow.join_stored(answers, context.dir("prepare"), ["messages", "reference", "meta", "split"], on=("id",))
    # Materialized: the count is the fan-out's expected rows, and the requests are read once.
    requests = joined.map_batches(
        judge_requests,
        fn_kwargs={"rubric": judge.rubric, "template": judge.template, "scale": judge.scale, "samples": judge.samples},
        batch_format="pyarrow", num_cpus=0.1,
    ).materialize()  # fmt: skip
    expected = requests.count()
    log.info("judge: %d requests to grade answers with %s (rubric %s, %d per answer)", expected, judge.label, judge.rubric, judge.samples)
    result = run_inference(requests, judge, storage.join(context.dir("judge"), JUDGE_ANSWERS),
                           expected_rows=expected, label="judge")  # fmt: skip
    log.info("judge: %s", format_summary(result.summary))
    verdicts = result.store.dataset(["id", "candidate", "request_hash", "model", "response", "error"])
    fn_kwargs = {"rubric": judge.rubric, "scale": judge.scale}
    if judge.samples == 1:
        graded = verdicts.map_batches(grades, fn_kwargs=fn_kwargs, batch_format="pyarrow", num_cpus=0.1)
    else:
        # The samples of one answer may sit in different blocks: grouped by (id, candidate),
        # in partitions of about SAMPLES_PER_PARTITION (Ray Data's default is 200 at any size).
        per_sample = verdicts.map_batches(sample_grades, fn_kwargs=fn_kwargs, batch_format="pyarrow", num_cpus=0.1)
        partitions = max(1, min(200, expected // SAMPLES_PER_PARTITION))
        graded = per_sample.groupby(["id", "candidate"], num_partitions=partitions).map_groups(
            mean_of_samples, fn_kwargs=fn_kwargs, batch_format="pyarrow", num_cpus=0.1
        )
    return graded, {"inference": result.summary}


def judge_requests(batch: pa.Table, rubric: str, template: str | None, scale: str, samples: int = 1) -> pa.Table:
    """One judge request per answered row: the rubric's prompt as a single user message;
    with samples > 1, that many requests, each keyed and hashed by its sample index."""
    spec, prompt, bounds = RUBRICS[rubric], load_template(rubric, template), Scale.parse(scale)
    rows = []
    for row in batch.to_pylist():
        if row["error"] or not row["response"]:
            continue  # nothing to grade: the filter drops rows without an answer anyway
        context = prompt_context(row["meta"])
        if spec.needs_context and not context:
            raise UsageError(f"row with id '{row['id']}': judge.rubric {rubric} needs a context passage, and this prompt has none")
        if spec.uses_reference and row["reference"] is None:
            raise UsageError(f"row with id '{row['id']}': judge.rubric {rubric} grades against the reference answer, and this prompt has none")
        text = prompt.render(question=conversation_text(row["messages"]), answer=row["response"], context=context,
                             reference=row["reference"] if spec.uses_reference else None,
                             scale_low=_number(bounds.low), scale_high=_number(bounds.high))  # fmt: skip
        messages = [{"role": "user", "content": text}]
        if samples == 1:  # no sample index: the key and request hash of a single ask
            rows.append({"id": row["id"], "candidate": row["candidate"], "messages": messages})
            continue
        rows += [{"id": row["id"], "candidate": f"{row['candidate']}{SAMPLE_MARK}{k}", "messages": messages, "sample": k}
                 for k in range(samples)]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)


def grades(batch: pa.Table, rubric: str, scale: str) -> pa.Table:
    """The judge's answers read as scores (stored as given and normalised) and rationales."""
    bounds = Scale.parse(scale)
    rows = []
    for row in batch.to_pylist():
        grade = parse_grade(row["response"], bounds)
        status = "error" if row["error"] else ("ok" if grade.score is not None else "unparsable")
        rows.append({
            "id": row["id"], "candidate": row["candidate"], "judge": row["model"], "rubric": rubric,
            "raw_score": grade.score, "score": bounds.normalise(grade.score) if grade.score is not None else None,
            "status": status, "rationale": row["error"] or grade.rationale, "request_hash": row["request_hash"],
            "samples": int(status == "ok"), "unparsable_samples": int(status == "unparsable"),
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=JUDGEMENT_SCHEMA)


SAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("candidate", pa.string()), ("sample", pa.int64()), ("judge", pa.string()),
    ("raw_score", pa.float64()), ("status", pa.string()), ("rationale", pa.string()), ("request_hash", pa.string()),
])  # fmt: skip


def sample_grades(batch: pa.Table, rubric: str, scale: str) -> pa.Table:
    """Each stored sample read as a grade, keyed by the graded answer's candidate and the
    sample index (from "<candidate>|sample-<k>")."""
    graded = grades(batch, rubric, scale).to_pylist()
    rows = []
    for row in graded:
        candidate, _, index = row["candidate"].rpartition(SAMPLE_MARK)
        rows.append({"id": row["id"], "candidate": candidate, "sample": int(index), "judge": row["judge"],
                     "raw_score": row["raw_score"], "status": row["status"], "rationale": row["rationale"],
                     "request_hash": row["request_hash"]})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def mean_of_samples(group: pa.Table, rubric: str, scale: str) -> pa.Table:
    """One answer's samples -> its judgement: the mean of the parsable samples' scores (the
    others counted, never guessed); no parsable sample: unparsable (error when every sample
    failed)."""
    samples = sorted(group.to_pylist(), key=lambda row: row["sample"])
    parsed = [row for row in samples if row["status"] == "ok"]
    unparsable = sum(row["status"] == "unparsable" for row in samples)
    status = "ok" if parsed else ("unparsable" if unparsable else "error")
    raw = sum(row["raw_score"] for row in parsed) / len(parsed) if parsed else None
    first = (parsed or samples)[0]
    row = {
        "id": first["id"], "candidate": first["candidate"], "judge": first["judge"], "rubric": rubric,
        "raw_score": raw, "score": None if raw is None else Scale.parse(scale).normalise(raw),
        "status": status, "rationale": first["rationale"],
        "request_hash": ",".join(row["request_hash"] or "" for row in samples),
        "samples": len(parsed), "unparsable_samples": unparsable,
    }  # fmt: skip
    return pa.Table.from_pylist([row], schema=JUDGEMENT_SCHEMA)


def _number(value: float) -> int | float:
    return int(value) if value == int(value) else value

