"""The demo's LLM judge, made offline like its teacher.

A judge must know which answer is right to compare two, so it starts from the trained teacher
(which already answers the questions) and is fine-tuned on a pairwise task built from the
labelled `teacher_train` split only: each question with two answers (the right letter, a wrong
letter, or the kind of text an untrained model writes), shown by the pairwise rubric exactly as
evaluation shows it (kdist.judging.compare renders both orders), and the verdict as the answer:
the position of the one right answer, or "tie" when both or neither are right. The demo serves
it as an `hf` endpoint and evaluation asks it through the same judge code as a real run; it
never sees a reference of the test split.
"""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa

from kdist.judging.compare import comparison_requests
from kdist.rows import SFT_SCHEMA
from kdist.tasks.multiple_choice import LETTERS

FIRST, SECOND = "x", "y"  # the two answers' names in the comparison keys
# Pairs of answer kinds and how often each is drawn: right vs wrong teaches the judge to solve
# the question, right vs junk to prefer any right answer to none, and the rest to call a tie
# when the labels decide nothing.
PAIR_KINDS = (
    (("right", "wrong"), 0.4),
    (("right", "junk"), 0.2),
    (("right", "right"), 0.1),
    (("wrong", "wrong"), 0.1),
    (("wrong", "other_wrong"), 0.1),
    (("wrong", "junk"), 0.1),
)


def junk_texts(tokenizer, count: int = 200, seed: int = 0) -> list[str]:
    """What an untrained model answers: a few random tokens of the vocabulary."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = [""] * (count // 10)  # an answer of special tokens alone decodes to nothing
    while len(texts) < count:
        text = tokenizer.decode(rng.sample(ids, rng.randint(1, 4))).strip()
        if text and text not in LETTERS:
            texts.append(text)
    return texts


def pairwise_rows(prompts: list[dict[str, Any]], split: str, junk: list[str], seed: int,
                  template: str | None = None) -> pa.Table:
    """SFT rows (judge prompt + verdict) for every labelled prompt of `split`, both orders."""
    pairs, verdicts = [], {}
    for prompt in sorted((p for p in prompts if p["split"] == split and p["reference"]), key=lambda p: p["id"]):
        rng = random.Random(f"{seed}-{prompt['id']}")
        kinds = rng.choices([k for k, _ in PAIR_KINDS], weights=[w for _, w in PAIR_KINDS])[0]
        if rng.random() < 0.5:
            kinds = kinds[::-1]
        answers = _answers(prompt["reference"], kinds, junk, rng)
        pairs.append({"id": prompt["id"], "messages": prompt["messages"], "meta": prompt.get("meta"),
                      "answers": {FIRST: answers[0], SECOND: answers[1]}})  # fmt: skip
        right = [answer == prompt["reference"] for answer in answers]
        verdicts[prompt["id"]] = {"ab": _verdict(*right), "ba": _verdict(*reversed(right))}
    requests = comparison_requests(pairs, FIRST, SECOND, template).to_pylist()
    rows = [{"id": f"{r['id']}|{r['candidate']}", "top_logprobs": None,
             "messages": [*r["messages"], {"role": "assistant", "content": verdicts[r["id"]][r["candidate"][-2:]]}]}
            for r in requests]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA)


def _answers(reference: str, kinds: tuple[str, str], junk: list[str], rng: random.Random) -> list[str]:
    wrong = rng.sample([letter for letter in LETTERS[:5] if letter != reference], 2)
    by_kind = {"right": reference, "wrong": wrong[0], "other_wrong": wrong[1]}
    return [by_kind[kind] if kind in by_kind else rng.choice(junk) for kind in kinds]


def _verdict(a_right: bool, b_right: bool) -> str:
    if a_right == b_right:
        return "tie"
    return "A" if a_right else "B"


def corpus(prompts: list[dict[str, Any]], template: str | None = None, count: int = 50) -> list[str]:
    """Judge prompts for the tokenizer's corpus, so that the rubric's words become tokens."""
    sample = [{"id": p["id"], "messages": p["messages"], "meta": p.get("meta"),
               "answers": {FIRST: LETTERS[i % 5], SECOND: LETTERS[(i + 1) % 5]}}
              for i, p in enumerate(prompts[:count])]  # fmt: skip
    texts = [m["content"] for r in comparison_requests(sample, FIRST, SECOND, template).to_pylist() for m in r["messages"]]
    return texts + ["tie"] * 20
