"""Which candidate rows become prompts, and in which split: duplicates, sampling, splits.

Works in the driver on narrow key columns only (row key, hashes, split, label, status: about
40 bytes a row), never on the rows, and returns the decision as a (rowkey, split) table that
the workers join back. Every step is seeded by run.seed, so a rerun decides the same.

- Two rows with one id and different prompts are an error naming both (`conflict`).
- Exact duplicate prompts (same messages) are removed and counted; of a group the copy in a
  held-out split is kept, so a test prompt never also sits in train.
- `data.sample`: the first N rows (source order) or N at random.
- `data.splits`: fractions or counts; stratified by label, every prefix of the shuffled order
  holds the labels in the data's proportions, so each split does too. Rows of one group
  (`group_hash`: what a writer made from one chunk or one conversation) go to one split
  together: the group is shuffled and stratified as one row, and takes the split its first
  row falls in, so a split's size is off by less than one group.
- The overlap check: rows of every other split whose normalised text also appears in train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdist.data.candidates import BAD, LOW_SCORE, OK
from kdist.errors import UsageError

KEY_COLUMNS = ["rowkey", "status", "id_hash", "prompt_hash", "text_hash", "source_split", "label", "group_hash"]
TRAIN = "train"


@dataclass
class Selection:
    decisions: pa.Table  # rowkey, split: the rows to keep
    counts: dict[str, Any] = field(default_factory=dict)
    conflict: tuple[int, int] | None = None  # two rowkeys with one id and different prompts


def select(keys: pa.Table, data: Any, seed: int) -> Selection:
    status = keys["status"].to_numpy(zero_copy_only=False)
    counts: dict[str, Any] = {"source_rows": keys.num_rows, "bad_rows_skipped": int((status == BAD).sum()),
                              "below_min_score": int((status == LOW_SCORE).sum())}  # fmt: skip
    ok = keys.filter(pa.array(status == OK))
    conflict = _id_conflict(ok)
    if conflict:
        return Selection(pa.table({"rowkey": pa.array([], pa.int64()), "split": pa.array([], pa.string())}), counts, conflict)
    kept = _without_duplicates(ok)
    counts["duplicates_removed"] = ok.num_rows - kept.num_rows
    order = _random_order(kept, seed)
    if data.sample:
        kept = _sample(kept, order, data.sample)
        order = _random_order(kept, seed)
    splits = _assign(kept, order, data) if data.splits else _source_splits(kept)
    keep = pc.is_valid(splits)
    decisions = pa.table({"rowkey": kept["rowkey"], "split": splits}).filter(keep)
    counts["unassigned"] = kept.num_rows - decisions.num_rows
    counts["overlap_with_train"] = _overlap(kept.filter(keep)["text_hash"], decisions["split"])
    return Selection(decisions, counts)


def _id_conflict(ok: pa.Table) -> tuple[int, int] | None:
    if not ok.num_rows:
        return None
    ids, prompts, rowkeys = (ok[c].to_numpy() for c in ("id_hash", "prompt_hash", "rowkey"))
    order = np.lexsort((rowkeys, prompts, ids))
    ids, prompts, rowkeys = ids[order], prompts[order], rowkeys[order]
    clash = np.flatnonzero((ids[1:] == ids[:-1]) & (prompts[1:] != prompts[:-1]))
    if not len(clash):
        return None
    return int(rowkeys[clash[0]]), int(rowkeys[clash[0] + 1])


def _without_duplicates(ok: pa.Table) -> pa.Table:
    """One row per prompt: a held-out copy before a train copy, then the earliest."""
    if not ok.num_rows:
        return ok
    prompts, rowkeys = ok["prompt_hash"].to_numpy(), ok["rowkey"].to_numpy()
    split = pc.fill_null(ok["source_split"], TRAIN).to_numpy(zero_copy_only=False)
    in_train = np.isin(split, [TRAIN, "teacher_train"])
    order = np.lexsort((rowkeys, in_train, prompts))
    first = np.ones(len(order), dtype=bool)
    first[1:] = prompts[order][1:] != prompts[order][:-1]
    chosen = np.sort(order[first])
    return ok.take(pa.array(chosen))


def _random_order(kept: pa.Table, seed: int) -> np.ndarray:
    """A seeded random key per row, from its prompt hash (the same row gets the same key
    whatever else the source holds)."""
    return _mix(kept["prompt_hash"].to_numpy().view(np.uint64) ^ _mix(np.array([seed + 1], dtype=np.uint64))[0])


def _mix(values: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: nearby inputs give unrelated outputs.
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _sample(kept: pa.Table, order: np.ndarray, sample: Any) -> pa.Table:
    if sample.how == "first":
        picked = np.argsort(kept["rowkey"].to_numpy(), kind="stable")[: sample.n]
    else:
        picked = np.argsort(order, kind="stable")[: sample.n]
    return kept.take(pa.array(np.sort(picked)))


def _source_splits(kept: pa.Table) -> pa.Array:
    return pc.fill_null(kept["source_split"], TRAIN)


def _assign(kept: pa.Table, order: np.ndarray, data: Any) -> pa.Array:
    """data.splits over the rows in a stratified random order: split k takes the next n_k;
    a group takes the split of its first row."""
    total = kept.num_rows
    names, sizes = list(data.splits), list(data.splits.values())
    counts = _counts(sizes, total)
    if sum(counts) > total:
        raise UsageError(f"data.splits asks for {sum(counts)} rows ({', '.join(f'{n}: {c}' for n, c in zip(names, counts))}); "
                         f"the data has {total} after duplicates and bad rows are left out")  # fmt: skip
    groups = _groups(kept)
    ranked = _ranked(kept, order, groups, data.stratify)
    assigned = np.full(total, None, dtype=object)
    start = 0
    for name, count in zip(names, counts):
        assigned[ranked[start : start + count]] = name
        start += count
    if groups is not None:
        ranked_groups = groups[ranked]
        first = np.ones(total, dtype=bool)
        first[1:] = ranked_groups[1:] != ranked_groups[:-1]  # members are contiguous in `ranked`
        split_of_group = assigned[ranked[first]]
        assigned = split_of_group[np.cumsum(first) - 1][np.argsort(ranked)]
    return pa.array(assigned, pa.string())


def _groups(kept: pa.Table) -> np.ndarray | None:
    """A group number per row (a row without a group is one of its own), or None when no
    row has a group."""
    if "group_hash" not in kept.column_names or kept["group_hash"].null_count == kept.num_rows:
        return None
    missing = pc.is_null(kept["group_hash"]).to_numpy(zero_copy_only=False)
    key = np.where(missing, kept["rowkey"].to_numpy(), pc.fill_null(kept["group_hash"], 0).to_numpy())
    return np.unique(np.stack([missing, key], axis=1), axis=0, return_inverse=True)[1].reshape(-1)


def _ranked(kept: pa.Table, order: np.ndarray, groups: np.ndarray | None, stratify: bool) -> np.ndarray:
    """Row indices in split order. With groups: each group ranked as one row (its member first
    in the random order stands for it), its members after one another."""
    if groups is None:
        return _stratified(kept, order) if stratify else np.argsort(order, kind="stable")
    by_order = np.argsort(order, kind="stable")
    heads = by_order[np.unique(groups[by_order], return_index=True)[1]]  # heads[g]: group g's row
    head_table = kept.take(pa.array(heads))
    group_ranks = _stratified(head_table, order[heads]) if stratify else np.argsort(order[heads], kind="stable")
    rank_of_group = np.empty(len(heads), dtype=np.int64)
    rank_of_group[group_ranks] = np.arange(len(heads))
    return np.lexsort((order, rank_of_group[groups]))


def _counts(sizes: list[float | int], total: int) -> list[int]:
    if all(isinstance(size, int) for size in sizes):
        return [int(size) for size in sizes]
    exact = [size * total for size in sizes]
    counts = [int(value) for value in exact]
    if abs(sum(sizes) - 1.0) < 1e-9:  # fractions of the whole: every row gets a split
        for index in np.argsort([c - v for c, v in zip(counts, exact)])[: total - sum(counts)]:
            counts[index] += 1
    return counts


def _stratified(kept: pa.Table, order: np.ndarray) -> np.ndarray:
    """Row indices such that every prefix holds each label in proportion: within a label, rows
    in random order get evenly spaced positions (i + 0.5) / n; all rows sorted by position."""
    labels = pc.fill_null(kept["label"], "").to_numpy(zero_copy_only=False)
    position = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ranked = members[np.argsort(order[members], kind="stable")]
        position[ranked] = (np.arange(len(ranked)) + 0.5) / len(ranked)
    return np.lexsort((order, position))


def _overlap(text_hashes: pa.ChunkedArray, splits: pa.ChunkedArray) -> dict[str, int]:
    """Per split other than train: rows whose normalised prompt text is also in train."""
    hashes, names = text_hashes.to_numpy(), pc.fill_null(splits, "").to_numpy(zero_copy_only=False)
    train = np.unique(hashes[names == TRAIN])
    return {str(name): int(np.isin(hashes[names == name], train).sum())
            for name in np.unique(names) if name not in (TRAIN, "teacher_train")}  # fmt: skip
