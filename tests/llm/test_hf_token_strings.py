"""The hf backend stores its top-k with strings and offsets beside the ids (as an
OpenAI-format server that names tokens by text), so offline logit KD across tokenizers works
from a local teacher too: offsets on a hand-made answer (a stripped space, a character of two
byte tokens, the end of turn), and end to end from generation to a student's positions."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch
from support.tiny_models import demo_word_llama

from kdist.llm.token_strings import char_offsets

ANSWER = "B) café apple"
PROMPT = [{"role": "user", "content": "Which item is a fruit? A) dog B) apple"}]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """The demo's words as whole tokens (" fruit", " apple"): tests/llm's own tiny_model_dir has
    another tokenizer."""
    return demo_word_llama(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def tokenizer(teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher_dir)


def starts_by_decoding(tokenizer, ids: list[int], text: str, lead: int) -> list[int | None]:
    """Per token, the length of the text decoded before it (None: inside a character, or
    outside the stripped text)."""
    out = []
    for i in range(len(ids)):
        before = tokenizer.decode(ids[:i], skip_special_tokens=True)
        after = tokenizer.decode(ids[:i + 1], skip_special_tokens=True)
        start = len(before) - lead
        whole = not before.endswith("\ufffd") and after != before
        out.append(start if whole and 0 <= start < len(text) else None)
    return out


def test_offsets_of_a_hand_made_answer(tokenizer):
    raw = " " + ANSWER + " "  # decoded with spaces around it, stored stripped
    ids = tokenizer(raw, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "\ufffd" in pieces  # é is two byte tokens: the second starts inside the character
    offsets = char_offsets(tokenizer, ids, raw, ANSWER)
    assert offsets == starts_by_decoding(tokenizer, ids, ANSWER, 1)
    assert offsets[0] is None  # " B" starts at the stripped space
    assert offsets[-1] is None and offsets[-2] is None  # the trailing space, the end of turn
    starts = [ANSWER[o] for o in offsets if o is not None]
    assert starts.count("é") == 1 and len(starts) == len(ids) - 4  # " B", é's 2nd byte, " ", end


def test_offsets_stop_where_the_generated_tokens_are_not_the_tokenizers_own(tokenizer):
    ids = tokenizer("B) fruit", add_special_tokens=False)["input_ids"]  # " fruit" is one token
    split = ids[:2] + tokenizer.convert_tokens_to_ids(["\u0120", *"fruit"])  # byte by byte
    assert split != ids and tokenizer.decode(split) == "B) fruit"
    assert char_offsets(tokenizer, split, "B) fruit", "B) fruit") == [0, 1] + [None] * (len(split) - 2)


@pytest.fixture(scope="module")
def answering_model(teacher_dir, tmp_path_factory) -> Path:
    """The tiny model taught to answer PROMPT with ANSWER (a few dozen steps, ~2 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdist.train.examples import tokenize_chat

    out = tmp_path_factory.mktemp("answering")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    example = tokenize_chat(tokenizer, [*PROMPT, {"role": "assistant", "content": ANSWER}], 96)
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(60):
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_hf_top_logprobs_carry_strings_that_a_student_of_another_vocabulary_reads(
        answering_model, tmp_path):
    from transformers import AutoTokenizer

    from kdist import modelkit
    from kdist.endpoints import HFEndpoint
    from kdist.llm.base import ChatRequest
    from kdist.llm.hf import HFBackend
    from kdist.rows import SFT_SCHEMA
    from kdist.train.batches import build_stored_cross_examples
    from kdist.train.examples import IGNORE_INDEX

    backend = HFBackend(HFEndpoint(model=str(answering_model),
                                   sampling={"max_tokens": 32, "temperature": 0, "top_logprobs": 3}))
    (answer,) = backend.generate([ChatRequest(id="r", messages=PROMPT, request_hash="h")])
    teacher = AutoTokenizer.from_pretrained(answering_model)
    assert answer.response == ANSWER
    entries = answer.top_logprobs
    generated = teacher(ANSWER, add_special_tokens=False)["input_ids"] + [teacher.eos_token_id]
    assert len(entries) == len(generated)
    for entry, token_id in zip(entries, generated):
        assert len(entry["token_ids"]) == len(entry["tokens"]) == len(entry["logprobs"]) == 3
        assert entry["token_ids"][0] == token_id and entry["tokens"][0] == entry["token"]  # greedy
    assert [e["offset"] for e in entries] == starts_by_decoding(teacher, generated, ANSWER, 0)
    for entry in entries:
        if entry["offset"] is not None and "\ufffd" not in entry["token"]:
            assert ANSWER[entry["offset"]:].startswith(entry["token"])

    # Stored as generate stores them, read by a student with its own 330-token vocabulary.
    row = {"id": "r", "messages": [*PROMPT, {"role": "assistant", "content": answer.response}],
           "top_logprobs": entries}
    stored = pa.Table.from_pylist([row], schema=SFT_SCHEMA).to_pylist()
    student = modelkit.train_tokenizer(["Which item is a fruit? A) dog B) apple café"] * 20, 300,
                                       tmp_path / "student")
    assert len(student) != len(teacher)
    examples, k, missing = build_stored_cross_examples(stored, student, 96, "align")
    assert k > 0 and missing == 0
    (example,) = examples
    first = next(p for p, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    # the student's "B" gets the teacher's "B" with the logprob the teacher gave it
    assert student.decode([example["labels"][first]]) == "B"
    slot = example["topk_ids"][first].index(example["labels"][first])
    assert example["topk_logprobs"][first][slot] == pytest.approx(entries[0]["logprobs"][0], rel=1e-6)
