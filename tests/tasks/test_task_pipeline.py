"""A task family end to end on the loopback endpoint: prepare -> generate -> judge -> filter.

synthetic export: no teacher is asked; the export's completions are the answers filter keeps.
Every family but multiple choice (the demo's) in one test, each from a file of its own columns
to sft/ with scripted teacher answers, then a few training steps of the tiny student on their
rows together.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdist import pipeline, storage
from kdist.config import validate_config
from kdist.llm.store import ResponseStore
from kdist.testing.llm_server import LLMServer, ServerSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

STAGES = ["prepare", "generate", "judge", "filter"]


def _config(tmp_path, data: dict, teacher: dict):
    return validate_config({
        "run": {"output_dir": str(tmp_path / "run")}, "runtime": {"num_cpus": 2, "log_to_driver": False},
        "data": data, "student": {"model": "unused"},
        "teacher": {"kind": "openai", "model": "m", "concurrency": 8, "batch_size": 16, **teacher},
    })  # fmt: skip


def _sft(tmp_path, split: str) -> list[dict]:
    return storage.read_table(str(tmp_path / "run" / "sft" / split)).to_pylist()


def test_synthetic_export_answers_are_trained_on_without_asking_a_teacher(tmp_path):
    rows = [{"id": f"t{i}", "prompt": f"Ticket {i}: where is my parcel?", "completion": f"Parcel {i} ships today.",
             "quality": 5.0 if i % 4 else 4.9} for i in range(40)]  # fmt: skip
    (tmp_path / "export.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"task": {"kind": "qa", "columns": {"question": "prompt"}}, "splits": {"train": 0.8, "validation": 0.2},
            "source": {"kind": "synthetic_export", "path": str(tmp_path / "export.jsonl"), "score_field": "quality", "min_score": 4.9}}  # fmt: skip
    config = _config(tmp_path, data, {"endpoint": "http://127.0.0.1:9/v1", "splits": []})  # nothing listens there
    assert pipeline.run_stages(config, STAGES) == 0
    summary = storage.read_json(str(tmp_path / "run" / "prompts" / storage.SUCCESS_FILE))["summary"]
    assert summary["below_min_score"] == 10 and summary["source_answers"] == 30
    kept = _sft(tmp_path, "train") + _sft(tmp_path, "validation")
    assert len(kept) == 30 and {row["messages"][-1]["content"] for row in kept} == {f"Parcel {i} ships today." for i in range(40) if i % 4}
    answers = ResponseStore(str(tmp_path / "run" / "responses")).read_all(["candidate"])
    assert set(answers["candidate"].to_pylist()) == {"source"}


# Per family: a source row (index i), and the teacher's scripted answer, matched by a phrase of
# the family's template (or, for a chat, by its question): a multi-turn chat, a JSON answer
# checked against a schema, a label, a summary, a grade, a worked number and a short answer
# from a context (multiple choice is the demo's task).
FAMILIES = {
    "conversation": (lambda i: {"messages": [{"role": "user", "content": "I want pasta."},
                                             {"role": "assistant", "content": "Boil salted water."},
                                             {"role": "user", "content": f"How long for batch {i}?"}]},
                     r"How long for batch", "About nine minutes."),
    "extraction": (lambda i: {"text": f"Ticket {i}: my invoice is wrong and nobody answers!"},
                   r"exactly these keys",
                   '{"sentiment": 2, "topic": "billing", "summary": "A wrong invoice.", "urgency": "high"}'),
    "nli": (lambda i: {"premise": f"Invoice {i} was paid twice.", "hypothesis": "The customer paid.", "label": "entailment"},
            r"Does the premise entail", "Entailment."),
    "summarization": (lambda i: {"document": f"Parcel {i} left the depot on Monday and has not moved since. "
                                             "Support has not answered two emails.", "summary": "A stuck parcel."},
                      r"Summarize the following text", "The parcel is stuck and support is silent."),
    "grading": (lambda i: {"question": f"Where is parcel {i}?", "context": "Parcels ship within a day.",
                           "answer": f"Parcel {i} ships today.", "score": 0.9},
                r"Grade the answer to the question", '{"score": 0.9, "rationale": "Matches the context."}'),
    "math": (lambda i: {"question": f"Tom has {i} apples and buys 3 more. How many now?", "answer": f"#### {i + 3}"},
             r"final answer on its own line", "He adds three.\n#### 7"),
    "qa": (lambda i: {"question": f"When does parcel {i} ship?", "context": "Parcels ship within a day."},
           r"Answer briefly", "Within a day."),
}  # fmt: skip


def test_every_task_family_from_its_file_to_a_few_training_steps(tmp_path, tiny_model_dir):
    from kdist.train.loop import TrainSpec
    from kdist.train.trainer import run_training

    script = [[pattern, answer] for _, pattern, answer in FAMILIES.values()]
    sft: dict[str, list[pa.Table]] = {"train": [], "validation": []}
    with LLMServer(ServerSettings(script=script)) as server:
        for family, (row, _, answer) in FAMILIES.items():
            path = tmp_path / family / "rows.jsonl"
            path.parent.mkdir()
            path.write_text("".join(json.dumps(row(i)) + "\n" for i in range(10)))
            data = {"task": family, "source": {"kind": "jsonl", "path": str(path)}, "splits": {"train": 8, "validation": 2}}
            config = _config(tmp_path / family, data, {"endpoint": server.openai_base_url, "splits": ["train", "validation"]})
            assert pipeline.run_stages(config, STAGES) == 0, family
            train, validation = _sft(tmp_path / family, "train"), _sft(tmp_path / family, "validation")
            # every answer parsed as the family's answer (the rule judge kept it)
            assert (len(train), len(validation)) == (8, 2), family
            assert {row["messages"][-1]["content"] for row in train} == {answer}, family
            for split in sft:
                sft[split].append(storage.read_table(str(tmp_path / family / "run" / "sft" / split)))
        assert len(server.stats()["requests"]) == 10 * len(FAMILIES)
    conversation = _sft(tmp_path / "conversation", "train")[0]["messages"]
    assert [turn["role"] for turn in conversation] == ["user", "assistant", "user", "assistant"]
    for split, tables in sft.items():
        pq.write_table(pa.concat_tables(tables), tmp_path / f"{split}.parquet")
    spec = TrainSpec(model_dir=str(tiny_model_dir), train_path=str(tmp_path / "train.parquet"),
                     eval_path=str(tmp_path / "validation.parquet"), out_dir=str(tmp_path / "student"),
                     train={"num_workers": 1, "batch_size": 8, "max_steps": 2, "eval_every": 2, "max_seq_len": 128,
                            "method": "lora", "lora": {"r": 4, "alpha": 8}},
                     seed=0, label="student", fast_validation=False)  # fmt: skip
    result = run_training(spec)
    metrics = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert result["steps"] == 2 and [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["loss_tokens"] > 0 for m in metrics)
    assert math.isfinite(metrics[-1]["val_loss"])
