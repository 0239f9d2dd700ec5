"""Offline logit KD across tokenizers: the teacher's stored top-k strings laid on the student's
tokens (hand-made entries, a real student tokenizer), ULD on stored top-k against its
definition, and end to end from a teacher endpoint that names tokens by text."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdist.train.cross_tokenizer import ids_by_text, student_topk
from kdist.train.examples import IGNORE_INDEX
from kdist.train.losses import KDParams, TopK, chunked_kd_loss, kd_loss


@pytest.fixture(scope="module")
def student_tokenizer(tmp_path_factory):
    """A byte-level BPE of 330 tokens: it splits many of the demo's words."""
    from kdist import modelkit
    from kdist.data import synthetic

    corpus = synthetic.vocabulary_text() + [
        q.user_message() for _, _, q in synthetic.generate({"train": 100}, seed=0)]
    return modelkit.train_tokenizer(corpus, 330, Path(tmp_path_factory.mktemp("student")))


def entry(token: str, offset: int | None, alternatives: list[tuple[str, float]]) -> dict:
    return {"token_ids": [], "token": token, "offset": offset,
            "tokens": [t for t, _ in alternatives], "logprobs": [v for _, v in alternatives]}


def start_chars(tokenizer, input_ids: list[int], labels: list[int]) -> dict[int, int]:
    """Label position -> the character of the answer where its token starts (decoded here)."""
    answer = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    return {p: len(tokenizer.decode(input_ids[answer[0]:p])) for p in answer}


def test_stored_strings_land_on_student_tokens_that_start_at_the_same_character(student_tokenizer):
    tokenizer = student_tokenizer
    content = "B) apple peach"
    messages = [{"role": "user", "content": "Which item is a fruit? A) dog B) apple"},
                {"role": "assistant", "content": content}]
    # A word-level teacher: " apple" and " peach" whole, with rivals of the same text twice
    # (merged), and one the student has no token for (dropped into the tail).
    entries = [entry("B", 0, [("B", -0.1), ("A", -2.5)]),
               entry(")", 1, [(")", -0.05)]),
               entry(" apple", 2, [(" apple", -0.3), ("B", -1.5), ("B", -2.0), ("zq\u00df", -3.0)]),
               entry(" peach", 8, [(" peach", -0.2)])]
    example, ids, logprobs = student_topk(tokenizer, messages, entries, 96, "align",
                                          ids_by_text(tokenizer))
    starts = start_chars(tokenizer, example.input_ids, example.labels)
    by_offset = {e["offset"]: e for e in entries}
    one_token = lambda text: (lambda enc: enc[0] if len(enc) == 1 else None)(  # noqa: E731
        tokenizer.encode(text, add_special_tokens=False))
    filled = 0
    for p in range(len(example.input_ids)):
        source = by_offset.get(starts.get(p, -1))
        # the end of turn starts at len(content): no teacher entry there
        if source is None or starts[p] >= len(content):
            assert ids[p] == [] and logprobs[p] == [], p
            continue
        merged: dict[int, float] = {}
        for text, value in zip(source["tokens"], source["logprobs"]):
            if one_token(text) is not None:
                merged[one_token(text)] = float(torch.logaddexp(
                    torch.tensor(merged.get(one_token(text), -math.inf), dtype=torch.float64),
                    torch.tensor(value, dtype=torch.float64)))
        assert dict(zip(ids[p], logprobs[p])) == pytest.approx(merged), p
        filled += 1
    # every teacher token start that a student token shares got its entry; the student splits
    # a word, so some of its answer tokens start where no teacher token does
    assert filled == len(set(by_offset) & set(starts.values())) >= 3
    assert set(starts.values()) - set(by_offset) - {len(content)}


def test_uld_keeps_the_probabilities_and_marks_slots(student_tokenizer):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "B"}]
    example, ids, logprobs = student_topk(student_tokenizer, messages,
                                          [entry("B", 0, [("B", -0.1), ("\u00df", -2.5)])],
                                          32, "uld", {})
    filled = [p for p in range(len(ids)) if ids[p]]
    assert len(filled) == 1 and ids[filled[0]] == [0, 0] and logprobs[filled[0]] == [-0.1, -2.5]
    assert example.labels[filled[0]] != IGNORE_INDEX


# --- ULD on stored top-k against its definition -------------------------------------------------


def uld_topk_by_definition(student_logits, teacher_logprobs: list[list[float]], t: float):
    """Per row: the n stored teacher probabilities sorted, plus 1 - their sum; the student's n
    largest plus 1 - their sum; both renormalised at temperature T on the log scale; L1."""
    total = []
    for logits, stored in zip(student_logits, teacher_logprobs):
        if not stored:
            total.append(0.0)
            continue
        n = len(stored)
        p_s = torch.softmax(logits.double(), -1).sort(descending=True).values[:n]
        p_t = torch.tensor(sorted(stored, reverse=True), dtype=torch.float64).exp()
        sides = []
        for top in (p_t, p_s):
            coarse = torch.cat([top, (1 - top.sum()).clamp(min=math.exp(-80))[None]]).log() / t
            sides.append(torch.softmax(coarse, -1))
        total.append(float((sides[0] - sides[1]).abs().sum()))
    return total


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_uld_on_stored_topk_equals_its_definition(t):
    torch.manual_seed(0)
    student_logits = torch.randn(4, 11, dtype=torch.float64) * 2
    stored = [[-0.2, -1.9, -3.0], [-0.7], [], [-1.2, -0.4]]  # unsorted, padded, empty
    k = 3
    topk = TopK(torch.tensor([[0] * len(s) + [-1] * (k - len(s)) for s in stored]),
                torch.tensor([s + [0.0] * (k - len(s)) for s in stored], dtype=torch.float64))
    labels = torch.tensor([1, 2, 3, 4])
    params = KDParams(alpha=0.0, temperature=t, cross="uld")
    parts = kd_loss(student_logits, labels, topk, params, 4)
    expected = sum(uld_topk_by_definition(student_logits, stored, t)) / 4
    assert float(parts.kd) == pytest.approx(expected, rel=1e-9)
    # chunked through a head: the same value and gradient
    hidden = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    head = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    direct = kd_loss(hidden @ head.T, labels, topk, params, 4)
    (g_direct,) = torch.autograd.grad(direct.loss, [hidden])
    chunked = chunked_kd_loss(hidden, head, labels, topk, params, 4, chunk_size=3)
    (g_chunked,) = torch.autograd.grad(chunked.loss, [hidden])
    assert float(chunked.kd) == pytest.approx(float(direct.kd), rel=1e-9)
    torch.testing.assert_close(g_chunked, g_direct)


def test_identical_distributions_have_zero_uld():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    stored = torch.log_softmax(logits, -1).sort(descending=True).values[:, :2]
    parts = kd_loss(logits.flip(-1), torch.tensor([0]), TopK(torch.zeros(1, 2, dtype=torch.long),
                    stored), KDParams(alpha=0.0, cross="uld"), 1)
    assert float(parts.kd) == pytest.approx(0.0, abs=1e-12)  # blind to which token is which
