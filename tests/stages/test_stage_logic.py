"""The judge's, the filter's and generate's own logic on small tables the tests write, without
Ray (the stages run these functions in Ray Data workers): the rule's and an LLM judge's scores,
thresholds inclusive at min_score, rows without an answer or a verdict never kept (min_score 0
too), held-out splits never in sft/, and generate's request hashes (a change of model or
sampling asks every row again, nothing else does)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from kdist import storage
from kdist.config import validate_config
from kdist.llm.batch import hash_requests, hash_settings
from kdist.llm.store import ResponseStore, new_run_id
from kdist.rows import JUDGEMENT_SCHEMA, PROMPT_SCHEMA, RESPONSE_SCHEMA, SFT_SCHEMA
from kdist.stages import filter as filter_stage
from kdist.stages import generate, judge
from kdist.tasks.multiple_choice import MultipleChoiceSettings
from support.prompts import synthetic_prompts

# --- judge ---------------------------------------------------------------------------------------

CHOICES_META = json.dumps({"labels": ["A", "B", "C", "D", "E"]})


def _answers(rows: list[tuple[str, str | None, str | None]], meta: str | None) -> pa.Table:
    return pa.Table.from_pylist(
        [{"id": i, "candidate": "teacher", "response": r, "error": e, "meta": meta} for i, r, e in rows],
        schema=pa.schema([("id", pa.string()), ("candidate", pa.string()), ("response", pa.string()),
                          ("error", pa.string()), ("meta", pa.string())]),
    )  # fmt: skip


def test_rule_judge_scores_one_for_a_parsed_letter_zero_otherwise():
    meta = synthetic_prompts({"train": 1})[0]["meta"]
    rows = [("letter", "B", None), ("sentence", "The answer is (D) cat", None), ("article", "A cat sat on the mat", None),
            ("empty", "", None), ("refusal", "I am not sure", None), ("error", None, "timeout: no answer")]  # fmt: skip
    table = judge.rule_judgements(_answers(rows, meta), MultipleChoiceSettings())
    got = {row["id"]: (row["status"], row["score"], row["raw_score"]) for row in table.to_pylist()}
    assert got == {"letter": ("ok", 1.0, 1.0), "sentence": ("ok", 1.0, 1.0), "article": ("unparsable", 0.0, 0.0),
                   "empty": ("unparsable", 0.0, 0.0), "refusal": ("unparsable", 0.0, 0.0),
                   "error": ("error", 0.0, 0.0)}  # fmt: skip
    assert table.schema == JUDGEMENT_SCHEMA and set(table["judge"].to_pylist()) == {"rule"}


def _verdicts(rows: list[tuple[str, str | None, str | None]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"id": i, "candidate": "teacher", "request_hash": f"h-{i}", "model": "openai:judge", "response": r, "error": e}
         for i, r, e in rows]
    )  # fmt: skip


@pytest.mark.parametrize(("scale", "low", "high"), [("1-5", 1, 5), ("0-1", 0, 1)])
def test_llm_verdicts_are_kept_as_given_and_normalised_to_the_unit_interval(scale, low, high):
    mid = (low + high) / 2
    rows = [("top", f"Score: {high}", None), ("mid", json.dumps({"score": mid, "rationale": "half right"}), None),
            ("low", f"{low}/{high}", None), ("none", "I cannot grade this", None), ("failed", None, "http 500: busy")]  # fmt: skip
    table = judge.grades(_verdicts(rows), rubric="correctness", scale=scale)
    got = {row["id"]: row for row in table.to_pylist()}
    for name, raw in (("top", high), ("mid", mid), ("low", low)):
        assert got[name]["status"] == "ok" and got[name]["raw_score"] == pytest.approx(raw)
        assert got[name]["score"] == pytest.approx((raw - low) / (high - low))
    assert got["mid"]["rationale"] == "half right" and got["top"]["request_hash"] == "h-top"
    # An unreadable verdict and a failed request have no score: never guessed.
    assert (got["none"]["status"], got["none"]["score"], got["none"]["raw_score"]) == ("unparsable", None, None)
    assert (got["failed"]["status"], got["failed"]["score"], got["failed"]["rationale"]) == ("error", None, "http 500: busy")


def _samples(rows: list[tuple[int, str | None, str | None]]) -> pa.Table:
    return judge.sample_grades(pa.Table.from_pylist(
        [{"id": "q", "candidate": f"teacher{judge.SAMPLE_MARK}{k}", "request_hash": f"h{k}", "model": "openai:judge",
          "response": r, "error": e} for k, r, e in rows]), rubric="correctness", scale="1-5")  # fmt: skip


@pytest.mark.parametrize(("rows", "expected"), [
    # the mean of the parsable samples; the unreadable and the failed one left out, not scored 0
    ([(2, "Score: 3", None), (0, "Score: 5", None), (1, "no idea", None), (3, None, "http 500: busy")],
     ("ok", 4.0, 0.75, 2, 1, "h0,h1,h2,h3")),
    ([(0, "Score: 2", None)], ("ok", 2.0, 0.25, 1, 0, "h0")),
    ([(0, "hmm", None), (1, None, "timeout")], ("unparsable", None, None, 0, 1, "h0,h1")),  # no parsable sample
    ([(0, None, "timeout"), (1, None, "timeout")], ("error", None, None, 0, 0, "h0,h1")),
])  # fmt: skip
def test_a_sampled_answer_scores_the_mean_of_its_parsable_samples(rows, expected):
    table = judge.mean_of_samples(_samples(rows), rubric="correctness", scale="1-5")
    assert table.schema == JUDGEMENT_SCHEMA and table.num_rows == 1
    row = table.to_pylist()[0]
    assert (row["id"], row["candidate"]) == ("q", "teacher")
    assert (row["status"], row["raw_score"], row["score"], row["samples"], row["unparsable_samples"], row["request_hash"]) == expected


def _judge_requests(samples: int) -> pa.Table:
    prompt = synthetic_prompts({"train": 1})[0]
    answers = pa.Table.from_pylist([{"id": prompt["id"], "candidate": "teacher", "response": "B", "error": None,
                                     "messages": prompt["messages"], "reference": prompt["reference"], "meta": prompt["meta"],
                                     "split": "train"}])  # fmt: skip
    return judge.judge_requests(answers, rubric="correctness", template=None, scale="1-5", samples=samples)


def test_one_sample_keeps_the_request_hash_of_a_single_ask_and_samples_each_have_their_own():
    import hashlib

    endpoint = {"kind": "openai", "model": "judge-m", "endpoint": "http://127.0.0.1:9/v1", "sampling": {"temperature": 0.7}}
    settings = hash_settings(validate_config({"teacher": {"model": "t"}, "student": {"model": "s"}, "judge": {**endpoint, "samples": 3}}).judge)
    single = hash_requests(_judge_requests(1), **settings).to_pylist()[0]
    # The hash as it was before samples existed (model, messages, sampling): runs judged
    # before keep their answers, nothing is asked again.
    canonical = json.dumps({"model": "openai:judge-m", "messages": single["messages"], "sampling": settings["sampling"]},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    assert single["candidate"] == "teacher" and single["request_hash"] == hashlib.sha256(canonical.encode()).hexdigest()[:32]
    sampled = hash_requests(_judge_requests(3), **settings).to_pylist()
    assert [row["candidate"] for row in sampled] == [f"teacher{judge.SAMPLE_MARK}{k}" for k in range(3)]
    assert len({row["request_hash"] for row in sampled} | {single["request_hash"]}) == 4
    assert all(row["messages"] == single["messages"] for row in sampled)  # the judge sees the same prompt


def test_several_samples_at_temperature_zero_are_refused_in_one_line():
    from kdist.config import ConfigError

    judge_section = {"kind": "openai", "model": "j", "endpoint": "http://127.0.0.1:9/v1", "samples": 3}
    with pytest.raises(ConfigError, match=r"samples: 3 at sampling.temperature 0") as err:
        validate_config({"teacher": {"model": "t"}, "student": {"model": "s"}, "judge": judge_section})
    assert "\n" not in str(err.value) and "judge" in str(err.value)


def _scores(path, scores: list[float | None]) -> str:
    rows = [{"id": f"r{i}", "candidate": "teacher", "judge": "j", "rubric": "r", "raw_score": s, "score": s,
             "status": "ok" if s is not None else "unparsable", "rationale": "", "request_hash": None}
            for i, s in enumerate(scores)]  # fmt: skip
    uri = str(path / "scores")
    storage.write_table(storage.join(uri, "part-0.parquet"), pa.Table.from_pylist(rows, schema=JUDGEMENT_SCHEMA))
    return uri


def test_judge_counts_a_score_equal_to_min_score_as_passed(tmp_path):
    uri = _scores(tmp_path, [0.75, 0.75, 0.7499, 1.0, 0.0, None])
    assert judge._counts(uri, 0.75) == {"rows": 6, "passed": 3, "unparsable": 1, "errors": 0}
    assert judge._counts(uri, 0.0)["passed"] == 5  # the unparsable row passes no threshold


# --- filter --------------------------------------------------------------------------------------

JUDGED = pa.schema([("id", pa.string()), ("candidate", pa.string()), ("response", pa.string()), ("error", pa.string()),
                    ("top_logprobs", RESPONSE_SCHEMA.field("top_logprobs").type), ("score", pa.float64())])  # fmt: skip


def _judged(rows: list[tuple[str, str | None, str | None, float | None]]) -> pa.Table:
    top = [{"token_ids": [7, 9], "logprobs": [-0.25, -1.5]}]
    return pa.Table.from_pylist([{"id": i, "candidate": "teacher", "response": r, "error": e, "score": s,
                                  "top_logprobs": top} for i, r, e, s in rows], schema=JUDGED)  # fmt: skip


JUDGED_ROWS = [("at", "B", None, 0.8), ("above", "C", None, 1.0), ("below", "D", None, 0.7999), ("zero", "E", None, 0.0),
               ("no-verdict", "A", None, None), ("error", None, "content_filter: filtered", 1.0),
               ("error-text", "partial", "length: cut", 1.0), ("empty", "", None, 1.0), ("null", None, None, 1.0)]  # fmt: skip


@pytest.mark.parametrize(("min_score", "kept"), [(0.8, {"at", "above"}), (0.0, {"at", "above", "below", "zero"}),
                                                 (1.0, {"above"}), (0.8001, {"above"})])  # fmt: skip
def test_filter_keeps_scores_at_or_above_min_score_and_never_a_row_without_answer_or_verdict(min_score, kept):
    passed = filter_stage._passed(_judged(JUDGED_ROWS), min_score)
    assert set(passed["id"].to_pylist()) == kept
    assert "score" not in passed.column_names and "error" not in passed.column_names


def _prompts(ids_by_split: dict[str, list[str]]) -> pa.Table:
    rows = [{"id": i, "task": "multiple_choice", "messages": [{"role": "user", "content": f"question {i}?"}],
             "reference": "B", "split": split, "meta": None} for split, ids in ids_by_split.items() for i in ids]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def _joined(passed: pa.Table, prompts: pa.Table) -> pa.Table:
    """passed joined with the prompts' messages and split, as dataflow.join_stored does."""
    by_id = {row["id"]: row for row in prompts.to_pylist()}
    keep = [i for i in passed["id"].to_pylist() if i in by_id]
    passed = passed.filter(pa.array([i in by_id for i in passed["id"].to_pylist()]))
    return passed.append_column("messages", pa.array([by_id[i]["messages"] for i in keep], PROMPT_SCHEMA.field("messages").type)) \
                 .append_column("split", pa.array([by_id[i]["split"] for i in keep], pa.string()))  # fmt: skip


def test_only_train_and_validation_reach_sft_as_prompt_plus_teacher_answer():
    splits = {"train": ["tr1", "tr2"], "validation": ["va1"], "test": ["te1", "te2"], "teacher_train": ["tt1"], "extra": ["ex1"]}
    ids = [i for group in splits.values() for i in group]
    judged = _judged([(i, f"answer {i}", None, 1.0) for i in ids])
    rows = filter_stage._sft_rows(_joined(filter_stage._passed(judged, 0.8), _prompts(splits)))
    assert sorted(rows["id"].to_pylist()) == sorted(splits["train"] + splits["validation"])
    for split in ("train", "validation"):
        part = filter_stage._only_split(rows, split)
        assert part.schema == SFT_SCHEMA and sorted(part["id"].to_pylist()) == sorted(splits[split])
        for row in part.to_pylist():
            assert row["messages"] == [{"role": "user", "content": f"question {row['id']}?"},
                                       {"role": "assistant", "content": f"answer {row['id']}"}]  # fmt: skip
            assert row["top_logprobs"] == [{"token_ids": [7, 9], "logprobs": [-0.25, -1.5],
                                                "tokens": None, "token": None, "offset": None}]
    assert filter_stage.SFT_SPLITS == ("train", "validation")


# --- generate: request hashes --------------------------------------------------------------------


def _teacher(**changes):
    teacher = {"kind": "openai", "model": "gpt-teacher", "endpoint": "http://127.0.0.1:9/v1",
               "sampling": {"temperature": 0.0, "max_tokens": 16}}  # fmt: skip
    for key, value in changes.items():
        if key in ("temperature", "max_tokens", "top_p", "top_logprobs"):
            teacher["sampling"] = {**teacher["sampling"], key: value}
        else:
            teacher[key] = value
    return validate_config({"teacher": teacher, "student": {"model": "s"}}).teacher


PROMPTS = _prompts({"train": ["a", "b", "c"], "validation": ["d"], "test": ["e", "f"]})


def _hashed(teacher, splits=("train", "validation", "test")) -> pa.Table:
    return hash_requests(generate._as_requests(PROMPTS, list(splits), generate.CANDIDATE), **hash_settings(teacher))


def _asked_again(store: ResponseStore, teacher, splits=("train", "validation", "test")) -> set[str]:
    hashed = _hashed(teacher, splits)
    return {i for i, done in zip(hashed["id"].to_pylist(), store.succeeded_hashes().contains(hashed["request_hash"])) if not done}


@pytest.fixture
def answered(tmp_path):
    """A store with the base teacher's answers to every prompt; the answer to 'c' failed."""
    hashed = _hashed(_teacher()).to_pylist()
    rows = [{"id": r["id"], "candidate": r["candidate"], "request_hash": r["request_hash"], "model": "openai:gpt-teacher",
             "response": None if r["id"] == "c" else "B", "error": "http 500: busy" if r["id"] == "c" else None,
             "attempts": 1} for r in hashed]  # fmt: skip
    store = ResponseStore(str(tmp_path / "responses"))
    store.write_shard(pa.Table.from_pylist(rows, schema=RESPONSE_SCHEMA), new_run_id())
    return store


def test_the_same_teacher_asks_again_only_for_rows_without_an_answer(answered):
    assert _asked_again(answered, _teacher()) == {"c"}
    assert _hashed(_teacher())["candidate"].to_pylist() == ["teacher"] * 6
    # Endpoint settings that do not change what is asked keep every answer.
    assert _asked_again(answered, _teacher(concurrency=3, endpoint="http://127.0.0.1:10/v1")) == {"c"}


@pytest.mark.parametrize("change", [{"model": "gpt-other"}, {"temperature": 0.7}, {"max_tokens": 32}, {"top_p": 0.9},
                                    {"top_logprobs": 5}])  # fmt: skip
def test_a_change_of_model_or_sampling_asks_every_row_again(answered, change):
    assert _asked_again(answered, _teacher(**change)) == set("abcdef")


def test_a_split_added_to_teacher_splits_asks_only_its_rows(answered):
    hashed = _hashed(_teacher(), splits=("train",))
    assert hashed["id"].to_pylist() == ["a", "b", "c"]
    assert _asked_again(answered, _teacher(), splits=("train",)) == {"c"}
