"""Selection on key columns (no Ray): duplicates, id conflicts, sampling, stratified splits."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pyarrow as pa
import pytest

from kdist.data.selection import select
from kdist.errors import UsageError


def keys(rows: list[dict]) -> pa.Table:
    defaults = {"status": "ok", "source_split": None, "label": None}
    full = [{**defaults, "rowkey": i, "id_hash": r.get("id", i), "prompt_hash": r.get("prompt", 1000 + i),
             "text_hash": r.get("text", r.get("prompt", 1000 + i)), **{k: v for k, v in r.items() if k not in ("id", "prompt", "text")}}
            for i, r in enumerate(rows)]  # fmt: skip
    schema = pa.schema([("rowkey", pa.int64()), ("status", pa.string()), ("id_hash", pa.int64()), ("prompt_hash", pa.int64()),
                        ("text_hash", pa.int64()), ("source_split", pa.string()), ("label", pa.string())])  # fmt: skip
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
