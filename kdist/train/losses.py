"""Knowledge-distillation losses, direct and chunked through the LM head.

    loss = alpha * CE(labels) + (1 - alpha) * T^2 * D(teacher || student)

D is the divergence between the teacher's and the student's next-token distributions, both at
temperature T: forward KL(p_t || p_s), reverse KL(p_s || p_t), or the generalised
Jensen-Shannon divergence with weight beta in (0, 1):

    m = beta * p_t + (1 - beta) * p_s
    JSD_beta = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)

(beta = 0.5 is the usual JSD; beta towards 0 or 1 approaches a scaled forward or reverse KL, use
those kinds for the limits). The T^2 factor keeps the gradient scale of the soft term
independent of T (Hinton et al., 2015). CE is always at temperature 1.

Normalisation: every term is a SUM over loss tokens divided by `num_loss_tokens`, which the
caller sets to the number of loss tokens in the whole effective batch (all micro-batches of one
optimizer step, all data-parallel ranks). Summing the losses of the micro-batches then gives
exactly the per-token mean of one big batch, whatever the packing or the accumulation.

Memory: `chunked_kd_loss` never builds full-vocabulary logits for the whole batch. It takes
the student's final hidden states and the LM head weight, and walks over the tokens in chunks;
per chunk it builds the logits, the loss and, at once, the gradients with respect to the hidden
states and the head weight (so the backward pass costs no recomputation, as in Liger-Kernel's
fused linear cross-entropy). Peak extra memory is a few [chunk, vocab] tensors plus one
gradient buffer of the head's size, instead of several [tokens, vocab] tensors.

Teacher logits come either online (teacher hidden states and teacher head, also chunked) or
offline as top-k log-probabilities stored by the generate stage. Offline, the rest of the
vocabulary (the tail) is unknown; two documented choices:

- "bucket" (default): a (k+1)-category distribution, the k stored tokens plus one tail bucket
  holding the remaining mass (teacher: 1 - sum of its top-k probabilities; student: its exact
  mass outside those k ids). At T = 1 this is exact and penalises student mass outside the
  teacher's top-k. With T != 1 the teacher's tail at temperature T cannot be recovered, so the
  temperature is applied to the k+1 coarse log-probabilities on both sides alike.
- "renormalise": both distributions restricted to the k ids and renormalised there (the
  conditional distribution given the top-k). Exact at any T, but blind to the student's mass
  outside the top-k (the CE term still pulls it toward the right token).

Model families that transform logits after the LM head (Gemma-2/3's final soft-capping,
Cohere's logit scale, Granite's logits scaling) pass a LogitTransform: every logit the loss
sees is transform(hidden x head), exactly what the model's own forward returns.

Entries with token id < 0 in the top-k are padding (fewer than k stored) and are ignored.
Stored logprobs are taken as the teacher's log-probabilities at temperature 1.

Across tokenizers (KDParams.cross, an online CrossTeacher), at the student positions aligned
with a teacher position (kdist.train.cross_tokenizer: both start at the same character of the
same text; other positions get CE only):

- "uld" (universal logit distillation, Boizard et al. 2024): D = sum_i |sort(p_s)_i -
  sort(p_t)_i|, both probability vectors at temperature T sorted in decreasing order, the
  shorter padded with zeros: the Wasserstein-1 distance between the two distributions when
  the tokens are unordered. Needs no shared vocabulary, blind to which token is which.
- "align": the teacher's probabilities are moved onto the student's vocabulary by token
  string (vocab_map; teacher tokens of one string merged by summing), and the chosen
  divergence compares the categories "each student id that some teacher id maps to" plus
  one tail bucket (teacher: its mass on unmapped ids; student: its mass on ids no teacher id
  maps to), the bucket scheme of offline top-k with exact full distributions at any T.

Offline across tokenizers (stored top-k as strings, KDParams.cross with a TopK): `align` maps
the strings onto student ids before the loss (kdist.train.cross_tokenizer.student_topk) and is
then plain offline top-k KD with its tail; `uld` compares the k sorted stored probabilities
plus the teacher's tail with the student's k largest plus its tail (_topk_uld).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
TailMode = Literal["bucket", "renormalise"]
CrossMode = Literal["uld", "align"]
IGNORE_INDEX = -100
_CHUNK_LOGITS = 1 << 23  # logits per chunk when the caller does not choose
# On a GPU, chunks of fewer tokens leave the head's matmuls too small to fill the chip, and
# the head's fp32 gradient is read and written once per chunk: on an H200 at a 128k vocabulary
# 512 tokens took 0.12 s a pass against 0.40 s at 2^23 logits (65 tokens), at the same peak
# memory, which the head's gradient buffers set there (benchmarks/RESULTS.md; measured before
# the head's gradient was scaled in place, which lowers that peak).
_GPU_MIN_CHUNK_TOKENS = 512
_TAIL_FLOOR = -80.0  # log of the smallest tail mass the top-k bucket represents


@dataclass(frozen=True)
class KDParams:
    alpha: float = 0.5  # weight of the hard-label CE; 1 - alpha goes to the soft KD term
    temperature: float = 1.0
    divergence: Divergence = "forward_kl"
    beta: float = 0.5  # JSD mixture weight of the teacher
    tail: TailMode = "bucket"  # offline top-k only
    cross: CrossMode | None = None  # teacher with another vocabulary (CrossTeacher) only

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (got {self.alpha})")
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature})")
        if self.divergence not in ("forward_kl", "reverse_kl", "jsd"):
            raise ValueError(
                f"divergence must be forward_kl, reverse_kl or jsd (got {self.divergence!r})"
            )
        if self.divergence == "jsd" and not 0.0 < self.beta < 1.0:
            raise ValueError(f"jsd beta must be in (0, 1) (got {self.beta})")
        if self.tail not in ("bucket", "renormalise"):
            raise ValueError(f"tail must be bucket or renormalise (got {self.tail!r})")
        if self.cross not in (None, "uld", "align"):
            raise ValueError(f"cross must be uld or align (got {self.cross!r})")


@dataclass(frozen=True)
class LogitTransform:
    """What a model does to hidden x head before returning logits: softcap(scale * z), where
    softcap(x) = tanh(x / c) * c (Gemma-2 final_logit_softcapping: c; Cohere logit_scale:
    scale; Granite logits_scaling s: scale = 1 / s)."""

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _apply(transform: LogitTransform | None, logits: torch.Tensor) -> torch.Tensor:
    return transform(logits) if transform is not None else logits


@dataclass(frozen=True)
class TopK:
    """Offline teacher: per token, k token ids (id < 0: padding) and their logprobs at T=1."""

    token_ids: torch.Tensor  # [N, k] int64
    logprobs: torch.Tensor  # [N, k] float


@dataclass(frozen=True)
class OnlineTeacher:
    """Online teacher: its final hidden states for the same tokens and its LM head (frozen)."""

    hidden: torch.Tensor  # [N, Ht]
    head_weight: torch.Tensor  # [V, Ht]
    head_bias: torch.Tensor | None = None
    transform: LogitTransform | None = None


@dataclass(frozen=True)
class CrossTeacher:
    """Online teacher with another vocabulary, its hidden states gathered at the student's
    positions: row n is the teacher's state at the position aligned with the student's n, or
    anything where aligned[n] is False (no KD term there)."""

    hidden: torch.Tensor  # [N, Ht]
    head_weight: torch.Tensor  # [Vt, Ht]
    aligned: torch.Tensor  # [N] bool
    vocab_map: torch.Tensor | None = None  # [Vt] student id of the same string, -1: none
    head_bias: torch.Tensor | None = None
    transform: LogitTransform | None = None


@dataclass(frozen=True)
class CrossLogits:
    """CrossTeacher's logits for some rows: what the per-chunk terms (and kd_loss) take."""

    logits: torch.Tensor  # [N, Vt]
    aligned: torch.Tensor  # [N] bool
    vocab_map: torch.Tensor | None = None


@dataclass
class LossParts:
    """The loss to backpropagate and its parts (detached, same normalisation) for metrics."""

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor  # the divergence alone, before (1 - alpha) * T^2


# --- the divergence on log-probabilities ----------------------------------------------------


def divergence(
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    kind: Divergence,
    beta: float = 0.5,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token D(teacher || student) from normalised log-probs [..., C]; sums over C.

    `valid` masks categories that do not exist (padded top-k slots); they contribute nothing.
    """
    if valid is not None:
        # Zero log-probs on both sides make every term below exactly 0 there, with finite
        # gradients (a -inf on either side would turn into NaN through 0 * inf).
        teacher_logp = torch.where(valid, teacher_logp, 0.0)
        student_logp = torch.where(valid, student_logp, 0.0)
    if kind == "forward_kl":
        return _kl(teacher_logp, student_logp)
    if kind == "reverse_kl":
        return _kl(student_logp, teacher_logp)
    mixture_logp = torch.logaddexp(teacher_logp + math.log(beta), student_logp + math.log1p(-beta))
    return beta * _kl(teacher_logp, mixture_logp) + (1.0 - beta) * _kl(student_logp, mixture_logp)


def _kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


# --- per-chunk terms (shared by the direct and the chunked paths) -------------------------------


def _chunk_sums(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | TopK | None,
    params: KDParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of CE, sum of D) over the loss tokens of one chunk; logits [C, V], fp32 or wider."""
    loss_tokens = labels != IGNORE_INDEX
    ce_sum = F.cross_entropy(student_logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if teacher is None or params.alpha == 1.0:
        return ce_sum, student_logits.new_zeros(())
    if isinstance(teacher, TopK) and params.cross == "uld":
        per_token = _topk_uld(student_logits, teacher, params)
    elif isinstance(teacher, TopK):
        per_token = _topk_divergence(student_logits, teacher, params)
    elif isinstance(teacher, CrossLogits):
        per_token = _cross_divergence(student_logits, teacher, params)
    else:
        t = params.temperature
        per_token = divergence(
            F.log_softmax(_upcast(teacher) / t, dim=-1),
            F.log_softmax(student_logits / t, dim=-1),
            params.divergence,
            params.beta,
        )
    return ce_sum, (per_token * loss_tokens).sum()


def _topk_divergence(student_logits: torch.Tensor, topk: TopK, params: KDParams) -> torch.Tensor:
    valid = topk.token_ids >= 0
    # Padded slots point at the first stored id, so masking them changes nothing below.
    ids = torch.where(valid, topk.token_ids, topk.token_ids[:, :1]).clamp(min=0)
    teacher_logp = topk.logprobs.to(student_logits.dtype).masked_fill(~valid, -math.inf)
    student_logp = F.log_softmax(student_logits, dim=-1)
    student_topk = student_logp.gather(-1, ids).masked_fill(~valid, -math.inf)
    if params.tail == "bucket":
        # Student tail: the exact log of its mass outside the k ids (a logsumexp over the rest
        # of the vocabulary, precise even when the top-k holds almost everything); teacher
        # tail: log(1 - sum of its top-k probabilities).
        # Both tails get a floor of e^-80 so that an empty tail (k = V) stays finite, and its
        # gradient too (a logsumexp over nothing but -inf has a NaN gradient).
        lse = torch.logsumexp(student_logits, -1, keepdim=True)
        outside = student_logits.scatter(-1, ids, -math.inf)
        floor = lse.detach() + _TAIL_FLOOR
        student_tail = torch.logsumexp(torch.cat([outside, floor], -1), -1) - lse[:, 0]
        teacher_tail = torch.logaddexp(
            _log1mexp(torch.logsumexp(teacher_logp, -1)), teacher_logp.new_tensor(_TAIL_FLOOR)
        )
        teacher_logp = torch.cat([teacher_logp, teacher_tail[:, None]], -1)
        student_topk = torch.cat([student_topk, student_tail[:, None]], -1)
        valid = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], -1)
    t = params.temperature
    per_token = divergence(
        _masked_log_softmax(teacher_logp / t, valid),
        _masked_log_softmax(student_topk / t, valid),
        params.divergence,
        params.beta,
        valid,
    )
    # A token with no stored top-k at all carries no teacher signal.
    return per_token * (topk.token_ids >= 0).any(-1)


def _topk_uld(student_logits: torch.Tensor, topk: TopK, params: KDParams) -> torch.Tensor:
    """ULD on stored top-k (teacher with another vocabulary, offline): per token with n stored
    probabilities, the teacher's n largest (sorted) plus its tail 1 - sum against the student's
    own n largest plus its tail, as (n+1)-category distributions at temperature T (as the
    bucket tail does): sum_i |s_(i) - t_(i)| + |s_tail - t_tail|. Ids only mark stored slots."""
    valid = topk.token_ids >= 0
    teacher_logp = topk.logprobs.to(student_logits.dtype).masked_fill(~valid, -math.inf)
    teacher_logp = teacher_logp.sort(-1, descending=True).values  # padding sorts last
    student_logp = F.log_softmax(student_logits, dim=-1)
    k = min(valid.shape[-1], student_logp.shape[-1])
    student_top = student_logp.topk(k, -1).values
    # Slots past the row's n go to each side's tail (valid is a prefix once sorted).
    valid = valid.sort(-1, descending=True).values[:, :k]
    student_top = student_top.masked_fill(~valid, -math.inf)
    teacher_logp = teacher_logp[:, :k]
    coarse = []
    for logp in (teacher_logp, student_top):
        tail = torch.logaddexp(_log1mexp(torch.logsumexp(logp, -1)), logp.new_tensor(_TAIL_FLOOR))
        coarse.append(torch.cat([logp, tail[:, None]], -1))
    full = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], -1)
    t = params.temperature
    teacher_p, student_p = (_masked_log_softmax(c / t, full).exp() for c in coarse)
    per_token = ((student_p - teacher_p).abs() * full).sum(-1)
    return per_token * valid.any(-1)


def _cross_divergence(student_logits: torch.Tensor, teacher: CrossLogits,
                      params: KDParams) -> torch.Tensor:
    t = params.temperature
    teacher_logp = F.log_softmax(_upcast(teacher.logits) / t, dim=-1)
    student_logp = F.log_softmax(student_logits / t, dim=-1)
    if params.cross == "uld":
        per_token = uld_distance(teacher_logp.exp(), student_logp.exp())
    elif params.cross == "align":
        if teacher.vocab_map is None:
            raise ValueError("cross-tokenizer align needs the teacher -> student vocab_map")
        teacher_cat, student_cat, valid = _merge_onto_student(teacher_logp, student_logp,
                                                              teacher.vocab_map)
        per_token = divergence(teacher_cat, student_cat, params.divergence, params.beta, valid)
    else:
        raise ValueError("a teacher with another vocabulary needs KDParams.cross (uld, align)")
    return per_token * teacher.aligned


def uld_distance(teacher_p: torch.Tensor, student_p: torch.Tensor) -> torch.Tensor:
    """Per row: sum_i |sort(p_s)_i - sort(p_t)_i|, sorted decreasingly, the shorter vocabulary
    padded with zeros (its missing tail is zero probability)."""
    size = max(teacher_p.shape[-1], student_p.shape[-1])
    sorted_t = F.pad(teacher_p.sort(-1, descending=True).values, (0, size - teacher_p.shape[-1]))
    sorted_s = F.pad(student_p.sort(-1, descending=True).values, (0, size - student_p.shape[-1]))
    return (sorted_s - sorted_t.to(sorted_s.dtype)).abs().sum(-1)


def _merge_onto_student(teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                        vocab_map: torch.Tensor):
    """(teacher, student, valid) log-probs over the student's V ids plus one tail bucket;
    valid: the ids some teacher id maps to, and the tail."""
    vocab = student_logp.shape[-1]
    slot = torch.where(vocab_map >= 0, vocab_map, vocab).to(student_logp.device)  # tail: V
    teacher_cat = _scatter_logsumexp(teacher_logp, slot, vocab + 1)
    valid = torch.zeros(vocab + 1, dtype=torch.bool, device=slot.device)
    valid[slot] = True
    valid[vocab] = True
    # Both tails get the floor of the top-k bucket: finite (and a finite gradient) when empty.
    floor = student_logp.new_full((student_logp.shape[0], 1), _TAIL_FLOOR)
    student_tail = torch.logsumexp(
        torch.cat([student_logp.masked_fill(valid[:vocab], -math.inf), floor], -1), -1)
    teacher_tail = torch.logaddexp(teacher_cat[:, vocab], floor[:, 0].to(teacher_cat.dtype))
    teacher_cat = torch.cat([teacher_cat[:, :vocab], teacher_tail[:, None]], -1)
    student_cat = torch.cat([student_logp, student_tail[:, None]], -1)
    valid = valid.expand_as(student_cat)
    return teacher_cat.to(student_cat.dtype), student_cat, valid


def _scatter_logsumexp(logp: torch.Tensor, slot: torch.Tensor, size: int) -> torch.Tensor:
    """out[:, c] = logsumexp of logp[:, slot == c] (-inf where no entry), exactly (no
    underflow of small merged probabilities): shift each slot by its own max first."""
    index = slot.expand_as(logp)
    top = logp.new_full((logp.shape[0], size), -math.inf).scatter_reduce(
        -1, index, logp, "amax", include_self=True)
    shift = torch.where(torch.isfinite(top), top, 0.0)
    total = logp.new_zeros(logp.shape[0], size).scatter_add(
        -1, index, (logp - shift.gather(-1, index)).exp())
    return total.log() + shift


def _masked_log_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.masked_fill(~valid, -math.inf), dim=-1)


def _log1mexp(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(logp)) for logp <= 0 (stored logprobs may sum a hair above 1: clamp)."""
    return torch.log(-torch.expm1(logp.clamp(max=0.0)))


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Softmax and log-sums in fp32 at least (bf16 logits lose the tail), fp64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _combine(ce_sum: torch.Tensor, kd_sum: torch.Tensor, params: KDParams) -> torch.Tensor:
    soft = (1.0 - params.alpha) * params.temperature**2
    return params.alpha * ce_sum + soft * kd_sum


# --- direct (full-vocab) loss: the reference, and fine for small vocabularies --------------------


def kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | TopK | CrossLogits | None,
    params: KDParams,
    num_loss_tokens: int | torch.Tensor,
) -> LossParts:
    """The KD loss from full logits. student_logits [N, V], labels [N] (-100: no loss)."""
    ce_sum, kd_sum = _chunk_sums(_upcast(student_logits), labels, teacher, params)
    return LossParts(
        loss=_combine(ce_sum, kd_sum, params) / num_loss_tokens,
        ce=(ce_sum / num_loss_tokens).detach(),
        kd=(kd_sum / num_loss_tokens).detach(),
    )


# --- chunked loss through the LM head -------------------------------------------------------------


def chunked_kd_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    labels: torch.Tensor,
    teacher: OnlineTeacher | CrossTeacher | TopK | None,
    params: KDParams,
    num_loss_tokens: int | torch.Tensor,
    head_bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    transform: LogitTransform | None = None,
) -> LossParts:
    """The same loss as `kd_loss(hidden @ head_weight.T, ...)` without the [N, V] logits.

    hidden [N, H] (any leading dims are flattened; labels alike), head_weight [V, H]. Tokens
    whose label is -100 are dropped before any logits are built, so padding and prompt tokens
    cost nothing. Gradients flow to hidden, head_weight and head_bias when they require them.
    chunk_size (tokens per chunk) defaults to about 2^23 logits per chunk (32 MiB in fp32):
    256 tokens at a 32k vocabulary, 64 at 128k, enough for a CPU's matmuls; on a GPU at least
    512 tokens.
    transform: the student's post-head logit transform (the teacher's rides in OnlineTeacher).
    Under torch.no_grad (validation) no gradient buffers are allocated at all.
    """
    chunk_size = chunk_size or _default_chunk_size(head_weight)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    keep = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
    hidden, labels = hidden.index_select(0, keep), labels.index_select(0, keep)
    teacher = _select_teacher(teacher, keep)
    loss, ce, kd = _ChunkedKD.apply(
        hidden, head_weight, head_bias, labels, teacher, params, chunk_size, transform,
        torch.is_grad_enabled(),
    )
    norm = torch.as_tensor(num_loss_tokens, dtype=loss.dtype, device=loss.device)
    return LossParts(loss=loss / norm, ce=ce / norm, kd=kd / norm)


def _default_chunk_size(head_weight: torch.Tensor) -> int:
    tokens = max(16, _CHUNK_LOGITS // head_weight.shape[0])
    return max(tokens, _GPU_MIN_CHUNK_TOKENS) if head_weight.is_cuda else tokens


def _select_teacher(teacher, keep: torch.Tensor):
    if isinstance(teacher, CrossTeacher):
        hidden = teacher.hidden.reshape(-1, teacher.hidden.shape[-1]).index_select(0, keep)
        return CrossTeacher(hidden.detach(), teacher.head_weight.detach(),
                            teacher.aligned.reshape(-1).index_select(0, keep),
                            teacher.vocab_map, teacher.head_bias, teacher.transform)
    if isinstance(teacher, OnlineTeacher):
        hidden = teacher.hidden.reshape(-1, teacher.hidden.shape[-1]).index_select(0, keep)
        return OnlineTeacher(hidden.detach(), teacher.head_weight.detach(), teacher.head_bias,
                             teacher.transform)
    if isinstance(teacher, TopK):
        k = teacher.token_ids.shape[-1]
        return TopK(
            teacher.token_ids.reshape(-1, k).index_select(0, keep),
            teacher.logprobs.reshape(-1, k).index_select(0, keep).detach(),
        )
    return None


class _ChunkedKD(torch.autograd.Function):
    """Sums of (loss, CE, D) over chunks; gradients are computed chunk by chunk in forward.

    Per chunk, autograd runs only from the loss back to the chunk's logits; the two matmuls
    through the head are done by hand so that the head's gradient accumulates in place
    (addmm_) instead of allocating a [V, H] gradient per chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, teacher, params, chunk_size, transform,
                grad_enabled):
        # needs_input_grad ignores no_grad mode: without the flag, validation would allocate a
        # head-sized gradient buffer (V x H fp32) for nothing.
        needs = tuple(n and grad_enabled for n in ctx.needs_input_grad[:3])
        # Head gradients accumulate over chunks: keep them in at least fp32 (bf16 sums drift).
        grad_hidden = torch.zeros_like(hidden) if needs[0] else None
        grad_weight = torch.zeros_like(weight, dtype=_upcast(weight).dtype) if needs[1] else None
        grad_bias = torch.zeros_like(bias, dtype=_upcast(bias).dtype) if needs[2] else None
        totals = torch.zeros(3, dtype=_upcast(hidden).dtype, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows]
            with torch.enable_grad():
                logits = _upcast(F.linear(h, weight, bias)).detach().requires_grad_(any(needs))
                ce_sum, kd_sum = _chunk_sums(
                    _apply(transform, logits), labels[rows], _teacher_chunk(teacher, rows), params
                )
                loss_sum = _combine(ce_sum, kd_sum, params)
                if any(needs):
                    (grad_logits,) = torch.autograd.grad(loss_sum, [logits])
            if needs[0]:
                grad_hidden[rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if needs[1]:
                _accumulate_head_grad(grad_weight, grad_logits, h)
            if needs[2]:
                grad_bias += grad_logits.sum(0).to(grad_bias.dtype)
            totals += torch.stack([loss_sum.detach(), ce_sum.detach(), kd_sum.detach()])
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        loss, ce, kd = totals.unbind()
        ctx.mark_non_differentiable(ce, kd)
        return loss, ce, kd

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_loss
        # The head's gradient is scaled in place: a scaled copy is a second head-sized fp32
        # buffer (2 GiB at 128k x 4096; on the H200 the loss's peak there, 4,072 MiB, was two
        # such buffers). Measured on the CPU at 32k x 4096: peak 1,037 -> 877 MiB. A second
        # backward through the same graph then fails on the modified saved tensor, not silently.
        return (
            grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None,
            grad_weight.mul_(scale).to(weight_dtype) if grad_weight is not None else None,
            (grad_bias * scale).to(bias_dtype) if grad_bias is not None else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _accumulate_head_grad(grad_weight, grad_logits, h) -> None:
    """grad_weight += grad_logits.T @ h, summed in grad_weight's fp32.

    With bf16/fp16 hidden states on a GPU the product runs on the tensor cores at that
    precision and cuBLAS adds it into the fp32 sum (out_dtype): done as an fp32 matmul it took
    65% of the loss's GPU time on an H200 (benchmarks/kd_loss_memory.py --device cuda). The
    gradient of the logits then enters the product in bf16, as in the model's own backward
    (against fp64 the head's gradient came out as close as with the fp32 matmul, 1.05e-3
    relative). Elsewhere (CPU, fp32) the product is an fp32 matmul.
    """
    if grad_weight.is_cuda and h.dtype in _LOW_PRECISION and grad_weight.dtype == torch.float32:
        torch.addmm(grad_weight, grad_logits.T.to(h.dtype), h, out_dtype=torch.float32,
                    out=grad_weight)
    else:
        grad_weight.addmm_(grad_logits.T.to(grad_weight.dtype), h.to(grad_weight.dtype))


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _teacher_chunk(teacher, rows: slice):
    if isinstance(teacher, CrossTeacher):
        with torch.no_grad():
            logits = _upcast(F.linear(teacher.hidden[rows], teacher.head_weight, teacher.head_bias))
            return CrossLogits(_apply(teacher.transform, logits), teacher.aligned[rows],
                               teacher.vocab_map)
    if isinstance(teacher, OnlineTeacher):
        with torch.no_grad():
            logits = _upcast(F.linear(teacher.hidden[rows], teacher.head_weight, teacher.head_bias))
            return _apply(teacher.transform, logits)
    if isinstance(teacher, TopK):
        return TopK(teacher.token_ids[rows], teacher.logprobs[rows])
    return None
