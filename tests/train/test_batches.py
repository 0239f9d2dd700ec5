"""Training examples: top-k laid on the answer tokens, ground-truth mixing, collation."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from kdist.train.batches import build_examples, collate, prepare
from kdist.train.examples import IGNORE_INDEX


def rows():
    return [
        {"id": "a", "messages": [{"role": "user", "content": "Which item is a fruit? A) dog B) apple"},
                                 {"role": "assistant", "content": "B"}],
         "top_logprobs": [{"token_ids": [5, 6, 7], "logprobs": [-0.1, -2.5, -3.0]},
                          {"token_ids": [2, 9], "logprobs": [-0.01, -5.0]}]},
        {"id": "b", "messages": [{"role": "user", "content": "Which item is a tool? A) saw B) cat"},
                                 {"role": "assistant", "content": "A"}],
         "top_logprobs": None},
    ]


def test_topk_sits_on_the_answer_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, k, missing = build_examples(rows(), tokenizer, 96, topk=True)
    assert k == 3 and missing == 1
    first = examples[0]
    answer = [i for i, label in enumerate(first["labels"]) if label != IGNORE_INDEX]
    assert len(answer) == 2  # "B" and the end-of-turn token
    assert first["topk_ids"][answer[0]] == [5, 6, 7]
    assert first["topk_ids"][answer[1]] == [2, 9, -1]  # padded to k
    assert first["topk_logprobs"][answer[1]] == [-0.01, -5.0, 0.0]
    assert all(ids == [-1, -1, -1] for i, ids in enumerate(first["topk_ids"]) if i not in answer)
    assert all(ids == [-1, -1, -1] for ids in examples[1]["topk_ids"])  # no top-k: CE only


def test_ground_truth_mixing_adds_reference_answers(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _, _ = build_examples(rows(), tokenizer, 96, ground_truth={"a": "A"},
                                    ground_truth_mix=1.0)
    assert len(examples) == 3  # row b has no reference
    learnt = [t for t, label in zip(examples[1]["input_ids"], examples[1]["labels"])
              if label != IGNORE_INDEX]
    assert tokenizer.decode(learnt).startswith("A")
    none, _, _ = build_examples(rows(), tokenizer, 96, ground_truth={"a": "A"})
    assert len(none) == 2


def test_collate_padded_and_packed(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, k, _ = build_examples(rows(), tokenizer, 96, topk=True)
    padded = prepare(examples, tokenizer.pad_token_id, k, packing=False, seq_len=96)
    batch = collate(padded.examples, padded)
    width = batch["input_ids"].shape[1]
    assert batch["topk_ids"].shape == (2, width, 3)
    assert int(batch["real_tokens"]) == sum(len(e["input_ids"]) for e in examples)
    packed = prepare(examples, tokenizer.pad_token_id, k, packing=True, seq_len=96)
    batch = collate(packed.examples, packed)
    assert "attention_mask" not in batch and batch["position_ids"].shape == (1, 96)
    assert int(batch["real_tokens"]) == sum(len(e["input_ids"]) for e in examples)
    assert batch["topk_ids"].shape == (1, 96, 3)
    assert torch.equal(batch["topk_ids"][0, :2], torch.full((2, 3), -1))
