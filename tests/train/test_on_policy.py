"""On-policy distillation without Ray: the student's completions replace its share of a batch,
the loss on them is the direct formula, and lambda = 0 is exactly logit KD with alpha = 0."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kdist.config import TrainSection
from kdist.train.examples import IGNORE_INDEX, Example, pad_batch
from kdist.train.loop import _kd_params
from kdist.train.objective import DistillationObjective, count_loss_tokens
from kdist.train.on_policy import (
    OnPolicy,
    Sampling,
    complete_batch,
    divergence_split,
    sampled_count,
)

V, PAD, EOS = 23, 0, 1


def tiny(seed: int, hidden: int = 16) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2))


def dataset_batch() -> dict[str, torch.Tensor]:
    """Three rows: prompt tokens (no label) then the training set's completion."""
    rows = [([5, 6, 7], [8, 9, EOS]), ([5, 10], [11, EOS]), ([12, 13, 14, 15], [16, 17, 18, EOS])]
    examples = [Example(p + c, [IGNORE_INDEX] * len(p) + c) for p, c in rows]
    batch = pad_batch(examples, PAD)
    batch["real_tokens"] = batch["attention_mask"].sum()
    batch["slots"] = torch.tensor(batch["input_ids"].numel())
    return batch


GREEDY = Sampling(lmbda=1.0, temperature=0.0, top_p=1.0, max_new_tokens=5, max_seq_len=32)


def test_student_completions_replace_the_chosen_rows():
    student = tiny(0)
    batch = dataset_batch()
    out, written = complete_batch(student, batch, GREEDY, 2, random.Random(0), PAD, EOS, False)
    assert out["generated"].sum() == 2
    for row in range(3):
        ids = out["input_ids"][row][out["attention_mask"][row].bool()].tolist()
        labels = out["labels"][row][out["attention_mask"][row].bool()].tolist()
        prompt = [5, 6, 7] if row == 0 else [5, 10] if row == 1 else [12, 13, 14, 15]
        assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        completion = ids[len(prompt):]
        assert labels[len(prompt):] == completion
        if out["generated"][row]:
            # greedy: exactly what the model's own generate says, cut after the end token
            expected = student.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False,
                                        pad_token_id=PAD, eos_token_id=EOS)[0, len(prompt):]
            expected = expected.tolist()
            expected = expected[: expected.index(EOS) + 1] if EOS in expected else expected
            assert completion == expected
    assert written == sum(int(((out["labels"][r] != IGNORE_INDEX).sum()))
                          for r in range(3) if out["generated"][r])


def reverse_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_s || p_t) written with probabilities."""
    p, q = torch.softmax(p_logits, -1), torch.softmax(q_logits, -1)
    return (p * torch.log(p / q)).sum()


def test_on_policy_loss_equals_the_direct_formula():
    """Hand-built: one row written by the student, two from the training set; the loss is the
    mean over every completion token of KL(student || teacher) at that position."""
    student, teacher = tiny(0), tiny(1, hidden=24)
    section = TrainSection(kd={"mode": "on_policy"})
    params = _kd_params(section)
    assert params.divergence == "reverse_kl" and params.alpha == 0.0
    batch, _ = complete_batch(student, dataset_batch(), GREEDY, 1, random.Random(1), PAD, EOS,
                              False)
    n = count_loss_tokens(batch["labels"])
    loss, ce, kd, kd_generated = DistillationObjective(student, params, teacher)(
        batch["input_ids"], batch["labels"], n, attention_mask=batch["attention_mask"],
        generated=batch["generated"])
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total = own = 0.0
    for row in range(3):
        for pos in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][row, pos] != IGNORE_INDEX:  # predicted from position pos - 1
                d = reverse_kl(s_logits[row, pos - 1], t_logits[row, pos - 1]).item()
                total += d
                own += d if batch["generated"][row] else 0.0
    assert loss.item() == pytest.approx(total / n, rel=1e-5)
    assert kd.item() == pytest.approx(total / n, rel=1e-5)
    assert kd_generated.item() == pytest.approx(own / n, rel=1e-5)
    assert ce.item() > 0  # CE is measured (a metric) but carries no weight: alpha = 0
    split = divergence_split(kd.item(), kd_generated.item(), n,
                             count_loss_tokens(batch["labels"][batch["generated"]]))
    assert split["kd_generated"] * count_loss_tokens(batch["labels"][batch["generated"]]) == \
        pytest.approx(own, rel=1e-5)


def test_lambda_zero_is_logit_kd_on_the_training_set():
    student, teacher = tiny(0), tiny(1, hidden=24)
    policy = OnPolicy(Sampling(0.0, 1.0, 1.0, 5, 32), seed=0, pad_id=PAD, eos_id=EOS,
                      synced=False)
    original = dataset_batch()
    (batch,), metrics = policy.complete(student, [dataset_batch()], step=3, rank=0)
    assert metrics["generated_tokens"] == 0 and not batch["generated"].any()
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(batch[key], original[key])
    for divergence in ("reverse_kl", "forward_kl", "jsd"):
        on_policy = _kd_params(TrainSection(kd={"mode": "on_policy", "divergence": divergence,
                                                "on_policy": {"lmbda": 0.0}}))
        logit = _kd_params(TrainSection(kd={"mode": "logit", "teacher_logits": "online",
                                            "alpha": 0.0, "divergence": divergence}))
        assert on_policy == logit
        n = count_loss_tokens(batch["labels"])
        got = DistillationObjective(student, on_policy, teacher)(
            batch["input_ids"], batch["labels"], n, attention_mask=batch["attention_mask"],
            generated=batch["generated"])
        expected = DistillationObjective(student, logit, teacher)(
            original["input_ids"], original["labels"], n,
            attention_mask=original["attention_mask"])
        assert got[0].item() == expected[0].item()  # exactly the same computation
        assert got[3].item() == 0.0


def test_every_rank_samples_as_many_rows_and_lambda_on_average():
    policy = OnPolicy(Sampling(0.4, 0.0, 1.0, 2, 32), seed=5, pad_id=PAD, eos_id=EOS,
                      synced=False)
    student = tiny(0)
    for step in range(3):
        counts = [int(policy.complete(student, [dataset_batch()], step, rank)[0][0]["generated"]
                      .sum()) for rank in range(3)]
        assert len(set(counts)) == 1  # under ZeRO-3 every rank must call generate alike
    rng = random.Random(0)
    mean = sum(sampled_count(8, 0.3, rng) for _ in range(4000)) / 4000
    assert mean == pytest.approx(2.4, abs=0.05)
    assert sampled_count(8, 1.0, rng) == 8 and sampled_count(8, 0.0, rng) == 0


def test_sampling_settings_and_the_token_budget():
    student = tiny(0)
    sampling = Sampling(lmbda=1.0, temperature=1.0, top_p=0.9, max_new_tokens=3, max_seq_len=32)
    torch.manual_seed(0)
    out, written = complete_batch(student, dataset_batch(), sampling, 3, random.Random(0), PAD,
                                  EOS, False)
    lengths = (out["labels"] != IGNORE_INDEX).sum(1)
    assert (lengths >= 1).all() and (lengths <= 3).all() and written == int(lengths.sum())
    # the sequence never outgrows train.max_seq_len: the budget shrinks to fit
    tight = Sampling(lmbda=1.0, temperature=0.0, top_p=1.0, max_new_tokens=10, max_seq_len=6)
    out, _ = complete_batch(student, dataset_batch(), tight, 3, random.Random(0), PAD, EOS, False)
    assert out["input_ids"].shape[1] <= 6


def test_config_defaults_and_refusals():
    from kdist.config import KDSection

    on_policy = KDSection(mode="on_policy")
    assert (on_policy.divergence, on_policy.teacher_logits, on_policy.alpha) == \
        ("reverse_kl", "online", 0.0)
    logit = KDSection(mode="logit")
    assert (logit.divergence, logit.teacher_logits, logit.alpha) == ("forward_kl", "offline", 0.5)
    assert KDSection.model_validate(on_policy.model_dump(mode="json")) == on_policy
    for bad, says in [({"mode": "on_policy", "alpha": 0.5}, "train.kd.alpha must be 0"),
                      ({"mode": "on_policy", "teacher_logits": "offline"}, "needs train.kd.teacher_logits online"),
                      ({"mode": "sequence", "cross_tokenizer": "align"}, "works with train.kd.mode logit")]:
        with pytest.raises(ValueError, match=says):
            KDSection(**bad)
    # Across tokenizers, offline top-k is accepted: generate stores the teacher's strings.
    assert KDSection(mode="logit", cross_tokenizer="uld").teacher_logits == "offline"
    with pytest.raises(ValueError, match="train.packing works with neither"):
        TrainSection(packing=True, kd={"mode": "on_policy"})
