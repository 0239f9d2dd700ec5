"""Sequence packing: several short examples per fixed-length row, attention kept inside each.

Chat examples for distillation are short and uneven; padding every row to the longest wastes
most of the compute. Packing places examples into rows of `seq_len` tokens (best-fit
decreasing, so rows fill up), and gives each example position ids that restart at 0.

How attention stays within each example: transformers (>= 4.53, here 5.x) detects packed rows
from `position_ids` when `attention_mask` is None and no KV cache is passed, and builds a
block-diagonal causal mask for the eager and SDPA kernels (flash-attention uses the same
position ids as cu_seqlens). So a packed batch is fed as
`model(input_ids=..., position_ids=..., use_cache=False)` with no attention mask; the test
checks that every example's logits equal those of the example run alone. The padding at the
end of a row gets its own restarting positions, so it is a separate (ignored) block.

Labels follow the transformers convention (unshifted; the model shifts them). The first label
of each example is set to -100: in a packed row it would be predicted from the previous
example's last token, and in an unpacked row it is never a target anyway, so this keeps the
loss identical to unpacked training.

Per-token extra fields (e.g. a teacher's top-k ids and logprobs) are packed alongside.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class PackStats:
    examples: int = 0
    rows: int = 0
    real_tokens: int = 0  # tokens of examples (after truncation)
    total_tokens: int = 0  # rows x seq_len, or the padded batch size without packing
    truncated: int = 0  # examples longer than seq_len, cut to it

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.total_tokens if self.total_tokens else 0.0


@dataclass
class PackedRows:
    rows: list[dict[str, list[Any]]] = field(default_factory=list)
    members: list[list[int]] = field(default_factory=list)  # example indices per row, in order
    stats: PackStats = field(default_factory=PackStats)


def pack_examples(
    examples: Sequence[Any],
    seq_len: int,
    pad_id: int,
    extra_pad: Mapping[str, Any] | None = None,
) -> PackedRows:
    """Pack examples (dicts or dataclasses with per-token lists input_ids, labels and the
    fields named in `extra_pad`) into rows of exactly `seq_len` tokens."""
    extra_pad = dict(extra_pad or {})
    fields = [_fields(example, extra_pad, seq_len) for example in examples]
    stats = PackStats(examples=len(fields))
    stats.truncated = sum(_length(example) > seq_len for example in examples)
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted: best fit by bisect
    for index in sorted(range(len(fields)), key=lambda i: -len(fields[i]["input_ids"])):
        size = len(fields[index]["input_ids"])
        slot = bisect.bisect_left(free, (size, -1))
        if slot == len(free):
            bins.append([index])
            space, bin_index = seq_len - size, len(bins) - 1
        else:
            space, bin_index = free.pop(slot)
            bins[bin_index].append(index)
            space -= size
        if space > 0:
            bisect.insort(free, (space, bin_index))
    pad = {"input_ids": pad_id, "labels": IGNORE_INDEX, **extra_pad}
    packed = PackedRows(stats=stats)
    for members in bins:
        packed.rows.append(_join([fields[i] for i in members], seq_len, pad))
        packed.members.append(members)
    stats.rows = len(packed.rows)
    stats.real_tokens = sum(len(f["input_ids"]) for f in fields)
    stats.total_tokens = stats.rows * seq_len
    return packed


def padding_without_packing(lengths: Sequence[int], batch_size: int, seq_len: int) -> PackStats:
    """The padding of plain batching (each batch padded to its longest row), for comparison."""
    lengths = [min(n, seq_len) for n in lengths]
    total = sum(
        max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size])
        for i in range(0, len(lengths), batch_size)
    )
    return PackStats(examples=len(lengths), rows=len(lengths), real_tokens=sum(lengths),
                     total_tokens=total)


def collate_packed(rows: Sequence[Mapping[str, list[Any]]]) -> dict[str, torch.Tensor]:
    """Packed rows -> tensors [batch, seq_len, ...]; no attention_mask on purpose (see above)."""
    return {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}


def _fields(example: Any, extra_pad: Mapping[str, Any], seq_len: int) -> dict[str, list[Any]]:
    data = asdict(example) if is_dataclass(example) else dict(example)
    out = {key: list(data[key])[:seq_len] for key in ("input_ids", "labels", *extra_pad)}
    if out["labels"]:
        out["labels"][0] = IGNORE_INDEX
    return out


def _length(example: Any) -> int:
    return len(example.input_ids if is_dataclass(example) else example["input_ids"])


def _join(
    members: list[dict[str, list[Any]]], seq_len: int, pad: Mapping[str, Any]
) -> dict[str, list[Any]]:
    row: dict[str, list[Any]] = {key: [] for key in pad}
    row["position_ids"] = []
    for member in members:
        for key in pad:
            row[key].extend(member[key])
        row["position_ids"].extend(range(len(member["input_ids"])))
    padding = seq_len - len(row["input_ids"])
    for key, value in pad.items():
        row[key].extend([value] * padding)
    row["position_ids"].extend(range(padding))
    return row
