"""The demo judge's training rows: verdicts that follow the labels in both orders, the
evaluation's own pairwise prompt, and no row from any split but the one asked for."""

from __future__ import annotations

import re
from collections import Counter

from kdist.data import synthetic
from kdist.demo import JUDGE_TEMPLATE
from kdist.demo_judge import junk_texts, pairwise_rows
from kdist.judging.verdicts import parse_verdict
from kdist.modelkit import train_tokenizer
from kdist.tasks.multiple_choice import MultipleChoiceTask


def _prompts(sizes: dict[str, int]) -> list[dict]:
    task = MultipleChoiceTask()
    return [{"id": f"{split}-{i}", "split": split, "reference": q.answer, "meta": None,
             "messages": task.prompt(q.record()).messages}
            for split, i, q in synthetic.generate(sizes, seed=0)]


def test_verdicts_follow_the_labels_in_both_orders_and_only_the_split_asked(tmp_path):
    prompts = _prompts({"teacher_train": 300, "test": 50})
    references = {p["id"]: p["reference"] for p in prompts}
    tokenizer = train_tokenizer(synthetic.vocabulary_text(), 300, tmp_path / "tok")
    rows = pairwise_rows(prompts, "teacher_train", junk_texts(tokenizer), seed=0,
                         template=str(JUDGE_TEMPLATE)).to_pylist()
    assert len(rows) == 600  # both orders of every teacher_train question
    assert not [r for r in rows if r["id"].startswith("test-")]
    for row in rows:
        prompt, verdict = row["messages"][0]["content"], row["messages"][1]["content"]
        shown = re.findall(r"^\[Answer ([AB])\] ?(.*)$", prompt, re.MULTILINE)
        right = [text == references[row["id"].split("|")[0]] for _, text in shown]
        expected = "tie" if right[0] == right[1] else ("A" if right[0] else "B")
        assert verdict == expected and parse_verdict(verdict) == expected
    # Both orders of a question give opposite verdicts: the judge cannot win by a position.
    verdicts = Counter(r["messages"][1]["content"] for r in rows)
    assert verdicts["A"] == verdicts["B"] > 100 and verdicts["tie"] > 100


def test_the_pairs_teach_right_from_wrong_letters_not_only_a_letter_from_noise(tmp_path):
    # Against the teacher both answers are letters: a judge taught mostly "letter beats noise"
    # calls every such pair a tie (judge accuracy 0.000, issue 14). Every kind of pair must be
    # there, each with its verdict, the one right answer in either position.
    prompts = _prompts({"teacher_train": 400})
    references = {p["id"]: p["reference"] for p in prompts}
    tokenizer = train_tokenizer(synthetic.vocabulary_text(), 300, tmp_path / "tok")
    rows = pairwise_rows(prompts, "teacher_train", junk_texts(tokenizer), seed=0,
                         template=str(JUDGE_TEMPLATE)).to_pylist()
    kinds = Counter()
    for row in rows:
        prompt, verdict = row["messages"][0]["content"], row["messages"][1]["content"]
        reference = references[row["id"].split("|")[0]]
        shown = [text for _, text in re.findall(r"^\[Answer ([AB])\] ?(.*)$", prompt, re.MULTILINE)]
        kind = tuple("right" if t == reference else "letter" if t in tuple("ABCDE") else "junk" for t in shown)
        kinds[kind, verdict] += 1
        assert prompt.index("[Answer B]") < prompt.index("Which item")  # answers first (template)
    for pair, verdict in ((("right", "letter"), "A"), (("letter", "right"), "B"),
                          (("right", "junk"), "A"), (("junk", "right"), "B"),
                          (("right", "right"), "tie"), (("letter", "letter"), "tie"),
                          (("letter", "junk"), "tie"), (("junk", "letter"), "tie")):
        assert kinds[pair, verdict] >= 15, (pair, verdict, kinds)
    # Most pairs are two letters, the kind the teacher's and the student's answers make.
    assert sum(n for (pair, _), n in kinds.items() if "junk" not in pair) > len(rows) / 2


def test_a_changed_judge_training_redoes_the_judge_alone_and_a_changed_teacher_both(tmp_path):
    from kdist.demo import _judge_fingerprint, _teacher_fingerprint, load_demo_config

    def fingerprints(*overrides: str) -> tuple[str, str]:
        config = load_demo_config(None, [f"run.output_dir={tmp_path}", *overrides])
        return _teacher_fingerprint(config), _judge_fingerprint(config)

    teacher, judge = fingerprints()
    assert fingerprints() == (teacher, judge)
    changed_teacher, changed_judge = fingerprints("demo.judge_train.learning_rate=0.003")
    assert changed_teacher == teacher and changed_judge != judge
    # The teacher's training, and the judge's template (the tokenizer is trained on its
    # prompts), change what the judge starts from: both are redone.
    for override in ("demo.teacher_train.learning_rate=0.003", "evaluate.judge.template=null"):
        changed_teacher, changed_judge = fingerprints(override)
        assert changed_teacher != teacher and changed_judge != judge, override


def test_a_demo_step_runs_again_only_without_resume_or_under_other_settings(tmp_path):
    from kdist.demo import _resumable_step

    runs = []

    def train() -> float:
        runs.append(1)
        return 0.5 + len(runs) / 10

    def step(fingerprint: str, resume: bool = True) -> float:
        return _resumable_step("demo judge", tmp_path / "judge", fingerprint, "judge_val_accuracy", train, resume)

    assert step("f1") == 0.6 and step("f1") == 0.6 and len(runs) == 1  # read back, not trained again
    assert step("f2") == 0.7 and len(runs) == 2  # other settings
    assert step("f2", resume=False) == 0.8 and len(runs) == 3
