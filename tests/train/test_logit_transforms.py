"""Families that transform logits after the LM head: the chunked loss reproduces the model's
own forward logits (Gemma-2 soft-capping, Cohere logit scale, Granite logits scaling)."""

from __future__ import annotations

import pytest
import torch
from support.tiny_models import with_biased_head
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from kdist.train.losses import IGNORE_INDEX, KDParams, kd_loss
from kdist.train.objective import (
    DistillationObjective,
    check_head_reproduces_logits,
    count_loss_tokens,
    logit_transform,
)

V = 61
SIZES = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
# Settings far from 1 (a cap of 0.5 saturates the tanh) so that a missing transform shows.
FAMILIES = {
    "gemma2": (Gemma2ForCausalLM, Gemma2Config, dict(head_dim=8, final_logit_softcapping=0.5)),
    "cohere": (CohereForCausalLM, CohereConfig, dict(logit_scale=3.0)),
    "granite": (GraniteForCausalLM, GraniteConfig, dict(logits_scaling=0.25)),
}


def build(family: str, seed: int, initializer_range: float = 0.2):
    model_cls, config_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_cls(**SIZES, **extra, initializer_range=initializer_range,
                        attn_implementation="eager")
    return model_cls(config).to(torch.float32)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (3, 12), generator=g)
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels[2, 9:] = IGNORE_INDEX
    return ids, labels, mask


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chunked_ce_equals_the_models_own_loss_and_gradients(family):
    model = build(family, 0)
    assert logit_transform(model) is not None
    ids, labels, mask = batch()
    loss, _, _ = DistillationObjective(model, chunk_size=5)(
        ids, labels, count_loss_tokens(labels), attention_mask=mask)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_online_kd_uses_both_models_transforms(family):
    student, teacher = build(family, 0), build(family, 1, initializer_range=0.5)
    ids, labels, mask = batch(1)
    params = KDParams(alpha=0.2, temperature=2.0, divergence="forward_kl")
    n = count_loss_tokens(labels)
    loss, _, kd = DistillationObjective(student, params, teacher, chunk_size=7)(
        ids, labels, n, attention_mask=mask)
    s_logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    ref = kd_loss(s_logits.reshape(-1, V), labels[:, 1:].reshape(-1), t_logits.reshape(-1, V),
                  params, n)
    torch.testing.assert_close(loss, ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kd, ref.kd, rtol=1e-5, atol=1e-6)
    assert kd.item() > 1e-4  # two different models: the soft term is not trivially zero


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_transform_matters(family):
    """Without the transform the loss is measurably different: the tests above can fail."""
    model = build(family, 0)
    ids, labels, mask = batch()
    objective = DistillationObjective(model)
    n = count_loss_tokens(labels)
    with_transform = objective(ids, labels, n, attention_mask=mask)[0]
    objective.transforms["student"] = None
    without = objective(ids, labels, n, attention_mask=mask)[0]
    assert abs(with_transform.item() - without.item()) > 1e-2


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_known_families_pass_the_head_check(family):
    check_head_reproduces_logits(build(family, 0))


def test_a_transform_the_model_does_not_apply_is_refused():
    """A config key kdist reads but this family's forward ignores stands for any unknown
    post-head transform: the check compares against the model's real logits."""
    config = LlamaConfig(**SIZES, logit_scale=0.5, output_multiplier=2.0)
    model = LlamaForCausalLM(config)
    check_head_reproduces_logits(LlamaForCausalLM(LlamaConfig(**SIZES)))
    with pytest.raises(ValueError, match="logit_scale, output_multiplier"):
        check_head_reproduces_logits(model)


def test_no_grad_validation_allocates_no_head_gradient(monkeypatch):
    """Under no_grad the chunked loss gives the same value and builds no gradient buffers
    (with a 262k vocabulary, the head's gradient buffer alone is 0.67 GB)."""
    model = build("gemma2", 0)
    ids, labels, mask = batch()
    objective = DistillationObjective(model)
    n = count_loss_tokens(labels)
    buffers = []
    zeros_like = torch.zeros_like
    monkeypatch.setattr(torch, "zeros_like",
                        lambda t, **kw: buffers.append(tuple(t.shape)) or zeros_like(t, **kw))
    with torch.no_grad():
        loss = objective(ids, labels, n, attention_mask=mask)[0]
    assert buffers == []
    objective(ids, labels, n, attention_mask=mask)
    assert (V, 32) in buffers  # with gradients on, the head's buffer is there
    monkeypatch.undo()
    assert not loss.requires_grad
    torch.testing.assert_close(loss, model(input_ids=ids, attention_mask=mask,
                                           labels=labels).loss.detach(), rtol=1e-5, atol=1e-6)


class _DoublingLlama(LlamaForCausalLM):
    """A family kdist does not know: its forward doubles the logits, no config key says so."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


def test_an_unannounced_transform_is_refused_and_a_biased_head_passes():
    with pytest.raises(ValueError, match=r"^_DoublingLlama: its forward transforms the LM head's "
                                         r"output .*\(config keys that may say how: none\); "
                                         r"this model is unsupported$"):
        check_head_reproduces_logits(_DoublingLlama(LlamaConfig(**SIZES)))
    biased = with_biased_head(LlamaForCausalLM(LlamaConfig(**SIZES)))
    biased.train()
    check_head_reproduces_logits(biased)  # the bias is part of the head's output
    assert biased.training  # the check leaves the model's mode as it was
