"""The objective module gives the same loss as the textbook formula on full logits."""

from __future__ import annotations

import pytest
import torch
from support.tiny_models import with_biased_head
from transformers import LlamaConfig, LlamaForCausalLM

from kdist.train.losses import IGNORE_INDEX, KDParams, TopK, kd_loss
from kdist.train.objective import DistillationObjective, count_loss_tokens
from kdist.train.packing import collate_packed, pack_examples

V = 61


def tiny(seed: int, hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False))


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (3, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels[1, 9:] = IGNORE_INDEX
    return ids, labels, mask


def test_sequence_kd_equals_the_models_own_loss():
    student = tiny(0)
    ids, labels, mask = batch()
    objective = DistillationObjective(student)
    loss, ce, kd = objective(ids, labels, count_loss_tokens(labels), attention_mask=mask)
    expected = student(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd.item() == 0.0 and ce.item() == pytest.approx(loss.item())


def assert_full_logits_formula(student, teacher, params, seed: int, vocab: int = V, **kwargs):
    """The objective's loss and the student's gradients equal kd_loss on the models' own
    logits (their first `vocab` columns); the teacher gets no gradient."""
    ids, labels, mask = batch(seed)
    n = count_loss_tokens(labels)
    loss, _, _ = DistillationObjective(student, params, teacher, chunk_size=5, **kwargs)(
        ids, labels, n, attention_mask=mask)
    loss.backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    s_logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1, :vocab]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1, :vocab]
    ref = kd_loss(s_logits.reshape(-1, vocab), labels[:, 1:].reshape(-1),
                  t_logits.reshape(-1, vocab), params, n).loss
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, p in zip(got, student.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in teacher.parameters())


def test_online_kd_equals_full_logits_formula_with_gradients():
    params = KDParams(alpha=0.3, temperature=2.0, divergence="jsd", beta=0.4)
    assert_full_logits_formula(tiny(0), tiny(1, hidden=48), params, seed=1)


def test_offline_topk_and_lora_student():
    from peft import LoraConfig, get_peft_model

    student = get_peft_model(tiny(0), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 modules_to_save=["lm_head"]))
    ids, labels, mask = batch(2)
    with torch.no_grad():
        t_logp = torch.log_softmax(tiny(3)(input_ids=ids).logits, -1)
    values, top_ids = t_logp.topk(5, -1)
    params = KDParams(alpha=0.5, temperature=1.0, tail="bucket")
    n = count_loss_tokens(labels)
    loss, _, kd = DistillationObjective(student, params)(
        ids, labels, n, attention_mask=mask, topk_ids=top_ids, topk_logprobs=values)
    s_logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1]
    # teacher distribution for token i sits at position i: shift it like the labels
    ref = kd_loss(s_logits.reshape(-1, V), labels[:, 1:].reshape(-1),
                  TopK(top_ids[:, 1:].reshape(-1, 5), values[:, 1:].reshape(-1, 5)), params, n)
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert kd.item() > 0
    loss.backward()
    trained_head = student.base_model.model.lm_head.modules_to_save["default"].weight
    assert trained_head.grad is not None and trained_head.grad.abs().sum() > 0


def test_packed_rows_give_the_unpacked_loss():
    from kdist.train.examples import Example

    student = tiny(0)
    g = torch.Generator().manual_seed(4)
    examples = []
    for length in (7, 9, 5, 11, 6):
        ids = torch.randint(1, V, (length,), generator=g).tolist()
        examples.append(Example(ids, [IGNORE_INDEX] * 3 + ids[3:]))
    packed = collate_packed(pack_examples(examples, seq_len=24, pad_id=0).rows)
    n = count_loss_tokens(packed["labels"])
    objective = DistillationObjective(student)
    loss, _, _ = objective(packed["input_ids"], packed["labels"], n,
                           position_ids=packed["position_ids"])
    alone = sum(
        objective(torch.tensor([e.input_ids]), torch.tensor([e.labels]), n)[0] for e in examples)
    assert n == sum(len(e.input_ids) - 3 for e in examples)
    assert loss.item() == pytest.approx(alone.item(), rel=1e-5)


def test_an_online_teacher_stays_frozen_through_training_steps():
    """Steps as the loop takes them (an optimizer over the parameters that require grad, the
    module set to train mode as DeepSpeed does after each validation): the teacher's weights
    never move, never get a gradient, and its dropout stays off, so its logits are the same
    every time; the student does learn."""
    torch.manual_seed(1)
    teacher = LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, tie_word_embeddings=False, attention_dropout=0.5))
    student = tiny(0)
    objective = DistillationObjective(student, KDParams(alpha=0.5, temperature=2.0), teacher, chunk_size=5)
    frozen = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    learning = {name: p.detach().clone() for name, p in student.named_parameters()}
    trainable = [p for p in objective.parameters() if p.requires_grad]
    assert {id(p) for p in trainable}.isdisjoint(id(p) for p in teacher.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids, labels, mask = batch(3)
    for _ in range(3):
        objective.train()
        optimizer.zero_grad()
        loss, _, kd = objective(ids, labels, count_loss_tokens(labels), attention_mask=mask)
        loss.backward()
        optimizer.step()
        assert kd.item() > 0
    assert objective.student.training and not objective.teacher.training
    for name, p in teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, name
        assert torch.equal(p, frozen[name]), name
    assert any(not torch.equal(p, learning[name]) for name, p in student.named_parameters())
    with torch.no_grad():  # dropout 0.5 in train mode would make these differ
        first, second = (teacher(input_ids=ids, attention_mask=mask).logits for _ in range(2))
    assert torch.equal(first, second)


def test_loss_tokens_are_counted_after_the_causal_shift():
    labels = torch.tensor([[IGNORE_INDEX, 5, 6], [7, 8, IGNORE_INDEX]])
    assert count_loss_tokens(labels) == 3  # the first column is never a target


def test_biased_and_padded_heads_give_the_full_logits_formula():
    """Heads with a bias (student and teacher) and with rows past the vocabulary cut by
    logits_size: the formula on the models' own logits, bias included, padded rows left out."""
    student = with_biased_head(tiny(0), V + 3, seed=1)
    teacher = with_biased_head(tiny(1, hidden=48), V + 5, seed=2)
    assert_full_logits_formula(student, teacher, KDParams(alpha=0.4, temperature=2.0), seed=2,
                               logits_size=V)


def test_lora_on_the_head_is_refused_and_the_vocab_map_is_not_saved():
    from peft import LoraConfig, get_peft_model

    lora_head = get_peft_model(tiny(0), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match=r"^train.lora.target_modules: LoRA on the LM head .*"
                                         r"modules_to_save: \[lm_head\]$"):
        DistillationObjective(lora_head)
    vocab_map = torch.arange(V)
    objective = DistillationObjective(tiny(0), KDParams(alpha=0.5), tiny(1), vocab_map=vocab_map)
    assert torch.equal(objective.vocab_map, vocab_map)
    assert "vocab_map" not in objective.state_dict()  # derived from the tokenizers, not trained


@pytest.mark.parametrize("missing", ["teacher_input_ids", "align"])
def test_cross_tokenizer_kd_without_the_teachers_tokens_or_alignment_says_so(missing):
    ids, labels, mask = batch(4)
    given = {"teacher_input_ids": ids, "align": torch.arange(12).expand(3, 12)}
    del given[missing]
    objective = DistillationObjective(tiny(0), KDParams(alpha=0.5, cross="uld"), tiny(1))
    with pytest.raises(ValueError, match="^cross-tokenizer KD needs the teacher's tokens and the alignment$"):
        objective(ids, labels, count_loss_tokens(labels), attention_mask=mask, **given)
