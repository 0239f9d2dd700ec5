"""On-policy distillation: the student completes a share of each batch's prompts itself.

Each optimizer step, before any gradient, a fraction lambda (train.kd.on_policy.lmbda) of every
micro-batch's rows get a completion sampled from the current student; the other rows keep the
training set's completion (the teacher's answer). The frozen teacher then scores every
completion token, whoever wrote it, and the loss is T^2 * D(teacher || student) per token
(generalized KD, Agarwal et al. 2024; reverse KL by default). With lambda = 0 nothing is sampled
and the step is logit KD with alpha = 0 on the training set's completions.

Why sample: trained on the teacher's text alone, the student never sees its own mistakes, and
at inference it conditions on its own earlier tokens (exposure bias). Scored on its own
samples, it learns what the teacher would do from where it actually goes.

Every rank samples the same number of rows per micro-batch (drawn from (seed, step), the rows
themselves from (seed, step, rank)), so that under ZeRO-3, where each forward gathers the
partitioned parameters in a collective, all ranks call generate alike; generate runs with
synced_gpus there, so a rank whose rows ended early keeps stepping until every rank is done.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from kdist.train.examples import IGNORE_INDEX, Example, pad_batch


@dataclass(frozen=True)
class Sampling:
    lmbda: float
    temperature: float  # 0: greedy
    top_p: float
    max_new_tokens: int
    max_seq_len: int  # prompt + completion never exceed what training takes


def sampled_count(batch_size: int, lmbda: float, rng: random.Random) -> int:
    """floor(lambda * B), plus one with probability frac(lambda * B): lambda * B on average."""
    exact = lmbda * batch_size
    return int(exact) + (rng.random() < exact - int(exact))


def rows_and_prompts(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int], int]]:
    """Per row of a padded batch: (ids, labels, prompt length), padding removed. The prompt is
    everything before the first label."""
    rows = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        ids, labels = ids[mask.bool()].tolist(), labels[mask.bool()].tolist()
        prompt = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
        rows.append((ids, labels, prompt))
    return rows


@torch.no_grad()
def sample_completions(model, prompts: list[list[int]], sampling: Sampling, pad_id: int,
                       eos_id: int, synced: bool) -> list[list[int]]:
    """The student's completions of `prompts`, each cut after its end-of-turn token."""
    width = max(len(p) for p in prompts)
    new_tokens = max(1, min(sampling.max_new_tokens, sampling.max_seq_len - width))
    device = next(model.parameters()).device
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):  # left padding: every row ends where it continues
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    greedy = sampling.temperature == 0.0
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens,
            do_sample=not greedy, temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=None, pad_token_id=pad_id,
            eos_token_id=eos_id, synced_gpus=synced)
    finally:
        model.train(was_training)
    return [_until_end(row[width:].tolist(), eos_id) for row in out.cpu()]


def _until_end(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens


def complete_batch(model, batch: dict[str, torch.Tensor], sampling: Sampling, count: int,
                   rng: random.Random, pad_id: int, eos_id: int,
                   synced: bool) -> tuple[dict[str, torch.Tensor], int]:
    """`batch` with `count` random rows' completions replaced by the student's own; returns
    it (with `generated`, [B] bool) and how many tokens the student wrote."""
    rows = rows_and_prompts(batch)
    chosen = sorted(rng.sample(range(len(rows)), count))
    completions = (sample_completions(model, [rows[i][0][: rows[i][2]] for i in chosen],
                                      sampling, pad_id, eos_id, synced) if chosen else [])
    examples = [Example(ids, labels) for ids, labels, _ in rows]
    for index, completion in zip(chosen, completions):
        prompt = rows[index][0][: rows[index][2]]
        examples[index] = Example(prompt + completion,
                                  [IGNORE_INDEX] * len(prompt) + completion)
    rebuilt = pad_batch(examples, pad_id)
    rebuilt["generated"] = torch.tensor([i in chosen for i in range(len(rows))])
    rebuilt["real_tokens"] = rebuilt["attention_mask"].sum()
    rebuilt["slots"] = torch.tensor(rebuilt["input_ids"].numel())
    return rebuilt, sum(len(c) for c in completions)


@dataclass(frozen=True)
class OnPolicy:
    """What a worker needs to complete its micro-batches at each step."""

    sampling: Sampling
    seed: int
    pad_id: int
    eos_id: int
    synced: bool  # ZeRO-3 with several ranks: generate with synced_gpus

    def complete(self, model, micro_batches: list[dict], step: int,
                 rank: int) -> tuple[list[dict], dict[str, float]]:
        """The step's micro-batches with the student's completions, and the step's generation
        metrics (this rank's wall time, all ranks' generated tokens)."""
        import time

        started = time.monotonic()
        counts = random.Random(f"{self.seed}-{step}")  # the same on every rank
        rows = random.Random(f"{self.seed}-{step}-{rank}")
        completed, written = [], 0
        for batch in micro_batches:
            count = sampled_count(len(batch["input_ids"]), self.sampling.lmbda, counts)
            batch, tokens = complete_batch(model, batch, self.sampling, count, rows, self.pad_id,
                                           self.eos_id, self.synced)
            completed.append(batch)
            written += tokens
        total = torch.tensor([float(written)])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        return completed, {"generated_tokens": int(total.item()),
                           "generation_s": round(time.monotonic() - started, 3)}


def divergence_split(kd: float, kd_generated: float, num_loss_tokens: float,
                     generated_tokens: float) -> dict[str, float]:
    """The step's divergence per token on the student's samples and on the training set's
    completions (kd values are sums divided by the step's num_loss_tokens). NaN where a step
    had no tokens of that kind."""
    dataset_tokens = num_loss_tokens - generated_tokens
    return {
        "kd_generated": kd_generated * num_loss_tokens / generated_tokens
        if generated_tokens else float("nan"),
        "kd_dataset": (kd - kd_generated) * num_loss_tokens / dataset_tokens
        if dataset_tokens > 0 else float("nan"),
    }
