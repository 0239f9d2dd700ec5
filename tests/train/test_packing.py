"""Packing keeps attention inside each example and reports its padding."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kdist.train.examples import Example
from kdist.train.packing import (
    IGNORE_INDEX,
    collate_packed,
    pack_examples,
    padding_without_packing,
)

V = 97


def random_examples(n: int, low: int, high: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(low, high)
        ids = [rng.randrange(1, V) for _ in range(length)]
        prompt = rng.randint(0, length - 1)
        out.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def test_rows_are_full_length_and_keep_every_token_once():
    examples = random_examples(50, 3, 20)
    packed = pack_examples(examples, seq_len=32, pad_id=0)
    assert all(len(row["input_ids"]) == 32 for row in packed.rows)
    assert sorted(i for members in packed.members for i in members) == list(range(50))
    real = sum(len(e.input_ids) for e in examples)
    assert packed.stats.real_tokens == real
    assert packed.stats.padding_fraction == pytest.approx(1 - real / (32 * len(packed.rows)))
    # best-fit decreasing fills rows: fewer rows than one per example and little padding
    assert len(packed.rows) <= real // 32 + 2
    for row, members in zip(packed.rows, packed.members):
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        offset = 0
        for member in members:  # each member's tokens, positions restarting at 0
            n = len(examples[member].input_ids)
            assert row["input_ids"][offset : offset + n] == examples[member].input_ids
            assert row["position_ids"][offset : offset + n] == list(range(n))
            assert row["labels"][offset] == IGNORE_INDEX  # never predicted across examples
            assert row["labels"][offset + 1 : offset + n] == examples[member].labels[1:]
            assert offset in starts
            offset += n
        assert all(label == IGNORE_INDEX for label in row["labels"][offset:])


def test_long_examples_are_truncated_and_counted():
    examples = random_examples(5, 40, 50)
    packed = pack_examples(examples, seq_len=32, pad_id=0)
    assert packed.stats.truncated == 5 and len(packed.rows) == 5
    assert packed.stats.padding_fraction == 0.0


def test_extra_per_token_fields_travel_with_their_tokens():
    examples = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "topk_ids": [[1, 2], [3, 4], [5, 6]]},
        {"input_ids": [8, 9], "labels": [-100, 9], "topk_ids": [[7, 8], [9, 10]]},
    ]
    packed = pack_examples(examples, seq_len=6, pad_id=0, extra_pad={"topk_ids": [-1, -1]})
    (row,) = packed.rows
    assert row["topk_ids"] == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [-1, -1]]
    assert row["position_ids"] == [0, 1, 2, 0, 1, 0]


def test_padding_without_packing_pads_each_batch_to_its_longest():
    stats = padding_without_packing([2, 4, 3, 3], batch_size=2, seq_len=10)
    assert stats.total_tokens == 2 * 4 + 2 * 3
    assert stats.padding_fraction == pytest.approx(1 - 12 / 14)
    assert (stats.examples, stats.rows, stats.real_tokens) == (4, 4, 12)  # one row an example
    # rows longer than seq_len count as cut to it
    assert padding_without_packing([12, 3], batch_size=2, seq_len=10).real_tokens == 13


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(attn):
    """The block-diagonal attention from restarting position_ids: no example sees another."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    model.config._attn_implementation = attn
    examples = random_examples(12, 3, 14, seed=1)
    packed = pack_examples(examples, seq_len=32, pad_id=0)
    batch = collate_packed(packed.rows)
    assert any(len(m) > 1 for m in packed.members)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits
        for row, members in enumerate(packed.members):
            offset = 0
            for member in members:
                ids = torch.tensor([examples[member].input_ids])
                alone = model(input_ids=ids, use_cache=False).logits[0]
                n = ids.shape[1]
                torch.testing.assert_close(logits[row, offset : offset + n], alone,
                                           atol=1e-5, rtol=1e-4)
                offset += n
    # without the position ids the examples would see each other: the check above can fail
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits
    assert not torch.allclose(leaky, logits, atol=1e-3)


def test_packed_loss_equals_unpacked_loss():
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    examples = random_examples(10, 4, 12, seed=2)
    packed = collate_packed(pack_examples(examples, seq_len=40, pad_id=0).rows)
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                       use_cache=False).logits
        packed_sum = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V), packed["labels"][:, 1:].reshape(-1), reduction="sum")
        alone_sum = sum(
            torch.nn.functional.cross_entropy(
                model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1],
                torch.tensor(e.labels[1:]), reduction="sum")
            for e in examples
        )
    assert packed_sum.item() == pytest.approx(alone_sum.item(), rel=1e-5)
