"""The training objective as one module: student (+ frozen teacher) in, loss out.

DeepSpeed wraps this module, not the bare student, so that:
- the loss goes through the LM head in chunks (kdist.train.losses.chunked_kd_loss) and the
  student's full-vocabulary logits are never built for the batch;
- an online teacher lives on the same workers, frozen, and under ZeRO-3 its parameters are
  partitioned like the student's (a teacher too large for one worker is sharded);
- the heads' weights, used here outside their own modules' forward, are registered as external
  parameters, which ZeRO-3 needs to gather them at the right time;
- each model's own post-head logit transform (see logit_transform) is applied to its chunked
  logits, so the loss sees the logits the model's forward returns.

Batches follow the transformers convention: labels unshifted (-100: no loss), and either an
attention_mask (padded rows) or restarting position_ids without a mask (packed rows, see
kdist.train.packing). Offline top-k tensors, when present, are aligned with the labels: the
entry at position i is the teacher's distribution over the token at position i.

A teacher with another tokenizer (KDParams.cross) reads its own tokens of the same rows
(teacher_input_ids, teacher_attention_mask); `align` gives, per student position, the teacher
position of the same token (kdist.train.cross_tokenizer), -1 where there is none.

On-policy batches (kdist.train.on_policy) say which rows the student wrote (`generated`); the
divergence is then also returned for those rows alone, as a fourth value, for the metrics.
"""

from __future__ import annotations

import torch
from torch import nn

from kdist.train.losses import (
    IGNORE_INDEX,
    CrossTeacher,
    KDParams,
    LogitTransform,
    LossParts,
    OnlineTeacher,
    TopK,
    chunked_kd_loss,
)


class DistillationObjective(nn.Module):
    def __init__(
        self,
        student: nn.Module,
        params: KDParams | None = None,
        teacher: nn.Module | None = None,
        logits_size: int | None = None,
        chunk_size: int | None = None,
        vocab_map: torch.Tensor | None = None,
    ):
        super().__init__()
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        # Sequence-level KD (SFT on the teacher's text) is the alpha = 1 case: CE alone.
        self.params = params or KDParams(alpha=1.0)
        self.logits_size = logits_size
        self.chunk_size = chunk_size
        self.transforms = {"student": logit_transform(student),
                           "teacher": logit_transform(teacher) if teacher is not None else None}
        # Teacher id -> student id of the same string (cross-tokenizer align); a buffer, so it
        # moves to the engine's device with the models.
        self.register_buffer("vocab_map", vocab_map, persistent=False)
        for model in (student, teacher):
            if model is not None:
                _register_head_as_external(self, _head(model))

    def train(self, mode: bool = True) -> DistillationObjective:
        """The student follows `mode`; the teacher stays in eval mode whatever the engine sets
        (DeepSpeed's engine.train() after each validation would switch its dropout on)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        num_loss_tokens: torch.Tensor | int,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        topk_ids: torch.Tensor | None = None,
        topk_logprobs: torch.Tensor | None = None,
        teacher_input_ids: torch.Tensor | None = None,
        teacher_attention_mask: torch.Tensor | None = None,
        align: torch.Tensor | None = None,
        generated: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(loss, ce, kd): sums over this batch's loss tokens divided by num_loss_tokens;
        with `generated` ([B] bool), also kd over the generated rows alone."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "position_ids": position_ids}
        hidden = _final_hidden(self.student, inputs)[:, :-1]
        targets = labels[:, 1:]
        teacher = None
        if self.teacher is not None and self.params.cross:
            teacher = self._cross_teacher(teacher_input_ids, teacher_attention_mask, align)
        elif self.teacher is not None:
            with torch.no_grad():
                teacher_hidden = _final_hidden(self.teacher, inputs)[:, :-1]
            weight, bias = _head_tensors(self.teacher, self.logits_size)
            teacher = OnlineTeacher(teacher_hidden, weight, bias, self.transforms["teacher"])
        elif topk_ids is not None:
            teacher = TopK(topk_ids[:, 1:], topk_logprobs[:, 1:])
        if generated is None:
            parts = self._loss(hidden, targets, teacher, num_loss_tokens)
            return parts.loss, parts.ce, parts.kd
        # The same loss as one call (both parts share the normalisation), split by rows.
        rows = generated.bool()[:, None]
        own = self._loss(hidden, targets.masked_fill(~rows, IGNORE_INDEX), teacher,
                         num_loss_tokens)
        data = self._loss(hidden, targets.masked_fill(rows, IGNORE_INDEX), teacher,
                          num_loss_tokens)
        return own.loss + data.loss, own.ce + data.ce, own.kd + data.kd, own.kd

    def _loss(self, hidden, targets, teacher, num_loss_tokens) -> LossParts:
        weight, bias = _head_tensors(self.student, self.logits_size)
        return chunked_kd_loss(hidden, weight, targets, teacher, self.params, num_loss_tokens,
                               head_bias=bias, chunk_size=self.chunk_size,
                               transform=self.transforms["student"])

    def _cross_teacher(self, input_ids, attention_mask, align) -> CrossTeacher:
        """The teacher's states, read on its own tokens, gathered at the student's positions:
        the student's shifted position i predicts label i + 1, whose teacher counterpart at
        position align[i + 1] is predicted from the teacher's state one before it."""
        if input_ids is None or align is None:
            raise ValueError("cross-tokenizer KD needs the teacher's tokens and the alignment")
        with torch.no_grad():
            states = _final_hidden(self.teacher, {"input_ids": input_ids,
                                                  "attention_mask": attention_mask})
        index = align[:, 1:] - 1
        gathered = states.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, states.shape[-1]))
        weight, bias = _head_tensors(self.teacher, None)
        return CrossTeacher(gathered, weight, index >= 0, self.vocab_map, bias,
                            self.transforms["teacher"])


def count_loss_tokens(labels: torch.Tensor) -> int:
    """Loss tokens of a batch after the causal shift (the first position is never a target)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def logit_transform(model: nn.Module) -> LogitTransform | None:
    """The transform the model's forward applies after its LM head, read from its config
    (the text config of a multimodal one). None: logits are hidden x head, as for Llama."""
    config = _text_config(_base(model))
    scale = float(getattr(config, "logit_scale", None) or 1.0)  # Cohere: logits * scale
    if getattr(config, "logits_scaling", None):  # Granite: logits / scaling
        scale /= float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)  # Gemma-2/3: tanh(x/c) * c
    if scale == 1.0 and softcap is None:
        return None
    return LogitTransform(scale=scale, softcap=float(softcap) if softcap else None)


def check_head_reproduces_logits(model: nn.Module) -> None:
    """Refuse a model whose forward does something to its logits that logit_transform does not
    know (another family's setting): the chunked loss would train against logits the model
    never produces. One forward of 8 tokens, before training starts."""
    import torch

    base = _base(model)
    ids = torch.arange(1, 9, device=base.device)[None]
    was_training = base.training
    base.eval()
    with torch.no_grad():
        expected = base(input_ids=ids, use_cache=False).logits[0].float()
        weight, bias = _head_tensors(model, None)
        got = nn.functional.linear(_final_hidden(model, {"input_ids": ids})[0], weight, bias)
        transform = logit_transform(model)
        got = transform(got.float()) if transform is not None else got.float()
    base.train(was_training)
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max())):
        keys = sorted(k for k in _text_config(base).to_dict()
                      if any(w in k for w in ("logit", "multiplier", "softcap")))
        raise ValueError(f"{type(base).__name__}: its forward transforms the LM head's output "
                         f"in a way kdist's chunked loss does not reproduce (config keys that "
                         f"may say how: {', '.join(keys) or 'none'}); this model is unsupported")


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft


def _head(model: nn.Module) -> nn.Module:
    head = _base(model).get_output_embeddings()
    if hasattr(head, "lora_A"):
        raise ValueError(
            "train.lora.target_modules: LoRA on the LM head is not supported by the chunked "
            "loss; train the head fully with train.lora.modules_to_save: [lm_head]"
        )
    return head


def _head_tensors(model: nn.Module, logits_size: int | None):
    head = _head(model)
    weight, bias = head.weight, getattr(head, "bias", None)
    if logits_size is not None:  # heads padded past the shared vocabulary
        weight = weight[:logits_size]
        bias = bias[:logits_size] if bias is not None else None
    return weight, bias


def _final_hidden(model: nn.Module, inputs: dict) -> torch.Tensor:
    decoder = _base(model).get_decoder()
    return decoder(**inputs, use_cache=False).last_hidden_state


def _register_head_as_external(owner: nn.Module, head: nn.Module) -> None:
    try:
        from deepspeed.zero import register_external_parameter
    except ImportError:  # no DeepSpeed: nothing is partitioned
        return
    for param in (head.weight, getattr(head, "bias", None)):  # the active copy under peft
        if isinstance(param, nn.Parameter):
            register_external_parameter(owner, param)
