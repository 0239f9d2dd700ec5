"""Training rows -> tokenized examples -> the micro-batches one worker feeds its model.

- Sequence-level KD: the rows' assistant turn is the teacher's answer; with
  train.kd.ground_truth_mix > 0, the ground-truth answer of that fraction of the rows (from the
  prompts' `reference`, where they have one) is added as one more example.
- Offline logit KD: each row's stored top-k (one entry per generated token) is laid on the
  answer's token positions in order; answer tokens beyond the stored entries (or rows without
  any) get no KD term, only CE. Ids -1 pad the top-k to the same k everywhere.
- Packing (train.packing) puts several examples in each row of max_seq_len tokens.
- Cross-tokenizer logit KD: each row is also tokenized for the teacher, with the alignment of
  the two (kdist.train.cross_tokenizer); batches then carry teacher_input_ids,
  teacher_attention_mask and align. Offline (stored top-k as strings), the teacher's entries
  are laid on the student's positions by the same alignment, as student ids (align) or bare
  probabilities (uld).

Every rank reads all rows and takes its own equal-sized shard with a seeded DistributedSampler,
so all ranks run the same number of steps and meet in every collective; an epoch's order is a
function of (seed, epoch), which makes resuming at a step exact.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch

from kdist.train.examples import IGNORE_INDEX, pad_batch, tokenize_chat
from kdist.train.packing import PackStats, collate_packed, pack_examples

TOPK_FIELDS = ("topk_ids", "topk_logprobs")
log = logging.getLogger(__name__)


@dataclass
class TrainData:
    examples: list[dict[str, Any]]  # or packed rows
    packed: bool
    pad_id: int
    topk: int = 0  # k of the offline top-k, 0 when not used
    pack_stats: PackStats | None = None
    rows_without_topk: int = 0
    teacher_pad_id: int | None = None  # cross-tokenizer KD: rows carry the teacher's tokens


def build_examples(
    rows: list[dict[str, Any]],
    tokenizer,
    max_seq_len: int,
    topk: bool = False,
    ground_truth: dict[str, str] | None = None,
    ground_truth_mix: float = 0.0,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], int, int]:
    """(examples, k, rows without top-k). `ground_truth` maps row id -> reference answer."""
    k = max((len(e["token_ids"]) for r in rows for e in (r.get("top_logprobs") or [])),
            default=0) if topk else 0
    rng = random.Random(seed)
    examples, missing = [], 0
    for row in rows:
        example = tokenize_chat(tokenizer, row["messages"], max_seq_len)
        fields: dict[str, Any] = {"input_ids": example.input_ids, "labels": example.labels}
        if topk:
            entries = row.get("top_logprobs") or []
            missing += not entries
            fields.update(_topk_fields(example.labels, entries, k))
        examples.append(fields)
        reference = (ground_truth or {}).get(row.get("id"))
        if reference and ground_truth_mix > 0 and rng.random() < ground_truth_mix:
            messages = [*row["messages"][:-1], {"role": "assistant", "content": reference}]
            gold = tokenize_chat(tokenizer, messages, max_seq_len)
            extra = {"input_ids": gold.input_ids, "labels": gold.labels}
            if topk:  # the teacher's distribution was for its own answer: no KD on this one
                extra.update(_topk_fields(gold.labels, [], k))
            examples.append(extra)
    return examples, k, missing


def build_pair_examples(rows: list[dict[str, Any]], tokenizer, teacher_tokenizer,
                        max_seq_len: int, log_summary: bool = False) -> TrainData:
    """Rows in the student's and the teacher's tokens, aligned (no packing)."""
    from kdist.train.cross_tokenizer import tokenize_pair

    examples = []
    for row in rows:
        pair = tokenize_pair(tokenizer, teacher_tokenizer, row["messages"], max_seq_len)
        examples.append({"input_ids": pair.input_ids, "labels": pair.labels,
                         "teacher_input_ids": pair.teacher_input_ids, "align": pair.align})
    if log_summary:
        labelled = sum(sum(x != IGNORE_INDEX for x in e["labels"]) for e in examples)
        aligned = sum(sum(a >= 0 for a in e["align"]) for e in examples)
        log.info("cross-tokenizer KD: %d of %d answer tokens have a teacher position",
                 aligned, labelled)
    return TrainData(examples, packed=False, pad_id=tokenizer.pad_token_id,
                     teacher_pad_id=teacher_tokenizer.pad_token_id
                     if teacher_tokenizer.pad_token_id is not None
                     else teacher_tokenizer.eos_token_id)


def build_stored_cross_examples(rows: list[dict[str, Any]], tokenizer, max_seq_len: int,
                                cross: str) -> tuple[list[dict[str, Any]], int, int]:
    """Offline logit KD across tokenizers: (examples, k, rows without any aligned entry). Each
    row's stored top-k strings are laid on the student's positions that start where a teacher
    token starts (kdist.train.cross_tokenizer.student_topk); other positions get CE only."""
    from kdist.train.cross_tokenizer import ids_by_text, student_topk

    student_ids = ids_by_text(tokenizer) if cross == "align" else {}
    built = [student_topk(tokenizer, row["messages"], row.get("top_logprobs") or [],
                          max_seq_len, cross, student_ids) for row in rows]
    k = max((len(ids) for _, per_position, _ in built for ids in per_position), default=0)
    examples = [{"input_ids": example.input_ids, "labels": example.labels,
                 "topk_ids": [ids + [-1] * (k - len(ids)) for ids in per_position],
                 "topk_logprobs": [values + [0.0] * (k - len(values)) for values in logprobs]}
                for example, per_position, logprobs in built]
    missing = sum(not any(per_position) for _, per_position, _ in built)
    return examples, k, missing


def _topk_fields(labels: list[int], entries: list[dict[str, list]], k: int) -> dict[str, Any]:
    ids = [[-1] * k for _ in labels]
    logprobs = [[0.0] * k for _ in labels]
    answer_positions = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    for position, entry in zip(answer_positions, entries):
        n = len(entry["token_ids"])
        ids[position] = list(entry["token_ids"]) + [-1] * (k - n)
        logprobs[position] = [float(x) for x in entry["logprobs"]] + [0.0] * (k - n)
    return {"topk_ids": ids, "topk_logprobs": logprobs}


def prepare(examples: list[dict[str, Any]], pad_id: int, k: int, packing: bool,
            seq_len: int) -> TrainData:
    if not packing:
        return TrainData(examples, packed=False, pad_id=pad_id, topk=k)
    extra = {"topk_ids": [-1] * k, "topk_logprobs": [0.0] * k} if k else None
    packed = pack_examples(examples, seq_len, pad_id, extra_pad=extra)
    return TrainData(packed.rows, packed=True, pad_id=pad_id, topk=k, pack_stats=packed.stats)


def collate(rows: list[dict[str, Any]], data: TrainData) -> dict[str, torch.Tensor]:
    """Tensors for DistillationObjective; `real_tokens` and `slots` feed the padding metric."""
    if data.packed:
        batch = collate_packed(rows)
        real = sum(len(row["input_ids"]) - _tail_padding(row, data.pad_id) for row in rows)
    else:
        batch = pad_batch([_Example(r["input_ids"], r["labels"]) for r in rows], data.pad_id)
        real = int(batch["attention_mask"].sum())
        if data.topk:
            width = batch["input_ids"].shape[1]
            for key, pad in (("topk_ids", -1), ("topk_logprobs", 0.0)):
                batch[key] = torch.tensor(
                    [r[key] + [[pad] * data.topk] * (width - len(r[key])) for r in rows])
        if data.teacher_pad_id is not None:
            batch.update(_teacher_fields(rows, data.teacher_pad_id, batch["input_ids"].shape[1]))
    batch["real_tokens"] = torch.tensor(real)
    batch["slots"] = torch.tensor(batch["input_ids"].numel())
    return batch


def _teacher_fields(rows: list[dict[str, Any]], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    teacher = pad_batch([_Example(r["teacher_input_ids"], r["teacher_input_ids"]) for r in rows],
                        pad_id)
    align = torch.tensor([r["align"] + [-1] * (width - len(r["align"])) for r in rows])
    return {"teacher_input_ids": teacher["input_ids"],
            "teacher_attention_mask": teacher["attention_mask"], "align": align}


@dataclass
class _Example:
    input_ids: list[int]
    labels: list[int]


def _tail_padding(row: dict[str, Any], pad_id: int) -> int:
    """Padding sits at the end of a packed row, labelled -100 with pad ids."""
    count = 0
    for token, label in zip(reversed(row["input_ids"]), reversed(row["labels"])):
        if token != pad_id or label != IGNORE_INDEX:
            break
        count += 1
    return count
