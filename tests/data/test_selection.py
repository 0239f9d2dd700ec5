"""Selection on key columns (no Ray): duplicates, id conflicts, sampling, stratified splits."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pyarrow as pa
import pytest

from kdist.data.selection import select
from kdist.errors import UsageError


def keys(rows: list[dict]) -> pa.Table:
    defaults = {"status": "ok", "source_split": None, "label": None, "group_hash": None}
    full = [{**defaults, "rowkey": i, "id_hash": r.get("id", i), "prompt_hash": r.get("prompt", 1000 + i),
             "text_hash": r.get("text", r.get("prompt", 1000 + i)), **{k: v for k, v in r.items() if k not in ("id", "prompt", "text")}}
            for i, r in enumerate(rows)]  # fmt: skip
    schema = pa.schema([("rowkey", pa.int64()), ("status", pa.string()), ("id_hash", pa.int64()), ("prompt_hash", pa.int64()),
                        ("text_hash", pa.int64()), ("source_split", pa.string()), ("label", pa.string()),
                        ("group_hash", pa.int64())])  # fmt: skip
    return pa.Table.from_pylist(full, schema=schema)


def data(**changes) -> SimpleNamespace:
    return SimpleNamespace(**{"sample": None, "splits": None, "stratify": True, **changes})


def splits_of(selection) -> dict[int, str]:
    return dict(zip(selection.decisions["rowkey"].to_pylist(), selection.decisions["split"].to_pylist()))


def test_exact_duplicates_keep_the_held_out_copy_and_are_counted():
    selection = select(keys([{"prompt": 7, "source_split": "train"}, {"prompt": 7, "source_split": "test"}, {"prompt": 8}]), data(), 0)
    assert splits_of(selection) == {1: "test", 2: "train"} and selection.counts["duplicates_removed"] == 1


def test_one_id_with_two_prompts_is_a_conflict_naming_both_rows():
    selection = select(keys([{"id": 5, "prompt": 1}, {"id": 6}, {"id": 5, "prompt": 2}]), data(), 0)
    assert selection.conflict == (0, 2)


def test_bad_and_low_score_rows_are_counted_not_kept():
    selection = select(keys([{"status": "bad"}, {"status": "low_score"}, {}]), data(), 0)
    assert selection.counts["bad_rows_skipped"] == 1 and selection.counts["below_min_score"] == 1
    assert list(splits_of(selection)) == [2]


def test_stratified_fractions_keep_label_proportions_and_every_row():
    rows = [{"label": "a"}] * 60 + [{"label": "b"}] * 30 + [{"label": "c"}] * 10
    selection = select(keys(rows), data(splits={"train": 0.7, "validation": 0.1, "test": 0.2}), 3)
    labels = {i: rows[i]["label"] for i in range(len(rows))}
    by_split = Counter((split, labels[key]) for key, split in splits_of(selection).items())
    assert by_split[("test", "a")] == 12 and by_split[("test", "b")] == 6 and by_split[("test", "c")] == 2
    assert sum(by_split.values()) == 100 and selection.counts["unassigned"] == 0


def test_counts_are_exact_seeded_and_too_many_is_an_error():
    rows = [{} for _ in range(50)]
    first = splits_of(select(keys(rows), data(splits={"train": 10, "validation": 5}), 1))
    assert Counter(first.values()) == {"train": 10, "validation": 5}
    assert splits_of(select(keys(rows), data(splits={"train": 10, "validation": 5}), 1)) == first
    assert splits_of(select(keys(rows), data(splits={"train": 10, "validation": 5}), 2)) != first
    with pytest.raises(UsageError, match="data.splits asks for 60 rows"):
        select(keys(rows), data(splits={"train": 50, "validation": 10}), 1)


def test_sampling_first_or_random():
    rows = [{} for _ in range(20)]
    assert list(splits_of(select(keys(rows), data(sample=SimpleNamespace(n=3, how="first")), 0))) == [0, 1, 2]
    picked = list(splits_of(select(keys(rows), data(sample=SimpleNamespace(n=3, how="random")), 0)))
    assert len(picked) == 3 and picked != [0, 1, 2]


def test_overlap_counts_held_out_rows_whose_text_is_in_train():
    rows = [{"text": 1, "source_split": "train"}, {"text": 1, "source_split": "test"}, {"text": 2, "source_split": "test"}]
    assert select(keys(rows), data(), 0).counts["overlap_with_train"] == {"test": 1}


def groups_by_split(selection, rows) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for key, split in splits_of(selection).items():
        found.setdefault(rows[key].get("group_hash"), set()).add(split)
    return found


@pytest.mark.parametrize("stratify", [True, False])
def test_a_group_never_spans_splits_and_split_sizes_stay_within_a_group(stratify):
    # 30 chunks with 4 questions each (what document_questions writes), 10 rows of no group
    rows = [{"group_hash": 500 + i // 4, "label": "ab"[i // 4 % 2]} for i in range(120)] + [{} for _ in range(10)]
    for seed in range(5):
        selection = select(keys(rows), data(splits={"train": 0.7, "test": 0.3}, stratify=stratify), seed)
        assert all(len(splits) == 1 for group, splits in groups_by_split(selection, rows).items() if group is not None)
        sizes = Counter(splits_of(selection).values())
        assert sum(sizes.values()) == 130 and abs(sizes["test"] - 39) < 4, sizes
    ungrouped = {splits_of(selection)[key] for key in range(120, 130)}
    assert ungrouped == {"train", "test"}  # rows of no group are placed one by one


def test_groups_are_stratified_by_label_and_counts_may_leave_groups_out():
    rows = [{"group_hash": i // 3, "label": "a" if i // 3 < 20 else "b"} for i in range(120)]  # 20 a-groups, 20 b-groups
    selection = select(keys(rows), data(splits={"train": 30, "test": 30}), 1)
    labels = Counter((split, rows[key]["label"]) for key, split in splits_of(selection).items())
    assert labels[("test", "a")] == labels[("test", "b")] == 15, labels
    assert all(len(splits) == 1 for splits in groups_by_split(selection, rows).values())
    assert selection.counts["unassigned"] == 60
