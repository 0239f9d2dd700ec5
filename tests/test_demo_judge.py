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
