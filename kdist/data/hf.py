"""Hugging Face datasets as read units: `datasets.load_dataset` (a hub id, a local dataset
directory, data files) or `load_from_disk` (a `save_to_disk` copy), optionally streaming.

A loaded dataset is memory-mapped Arrow: it travels to the workers by reference to its cache
files, and each unit is a slice of rows. A streaming dataset is one unit per split, iterated
by one worker without downloading the whole dataset first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from kdist import storage
from kdist.errors import UsageError

ROWS_PER_UNIT = 8192
# The kdist split a record of `splits` belongs to, set beside the dataset's own columns.
SPLIT_KEY = "__split"


def load(source: Any) -> dict[str, Any]:
    """kdist split -> the loaded `datasets` split (Dataset or IterableDataset)."""
    loaded = {}
    for split, hf_split in source.splits.items():
        loaded[split] = _load_split(source, hf_split)
    return loaded


def _load_split(source: Any, hf_split: str) -> Any:
    import datasets

    try:
        if _is_saved_copy(source.path):
            saved = datasets.load_from_disk(storage.filesystem_for(source.path)[1])
            if isinstance(saved, datasets.DatasetDict):
                return saved[hf_split]
            return saved
        return datasets.load_dataset(source.path, source.name, split=hf_split, data_files=source.data_files,
                                     streaming=source.streaming)  # fmt: skip
    except KeyError:
        raise UsageError(f"data.source.splits: the dataset at {source.path} has no split '{hf_split}'") from None
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UsageError(f"data.source: cannot load {source.path} split '{hf_split}' ({first})") from None


def _is_saved_copy(path: str) -> bool:
    """A `save_to_disk` directory: a dataset_dict.json (several splits) or a state.json."""
    local = os.path.expanduser(path)
    return os.path.isdir(local) and any(os.path.exists(os.path.join(local, name)) for name in ("dataset_dict.json", "state.json"))


def plan(loaded: dict[str, Any]) -> list[dict[str, Any]]:
    units = []
    for split, dataset in loaded.items():
        if not hasattr(dataset, "__len__"):  # streaming
            units.append({"kind": "hf", "path": split, "part": -1})
            continue
        for start in range(0, len(dataset), ROWS_PER_UNIT):
            units.append({"kind": "hf", "path": split, "part": start})
    return units


def read(unit: dict[str, Any], loaded: dict[str, Any], name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    split, start = unit["path"], unit["part"]
    dataset = loaded[split]
    if start < 0:
        for index, record in enumerate(dataset):
            yield f"{name} [{split}] row {index + 1}", {**record, SPLIT_KEY: split}
        return
    rows = dataset[start : start + ROWS_PER_UNIT]  # column -> values
    columns = list(rows)
    for offset in range(len(rows[columns[0]]) if columns else 0):
        yield f"{name} [{split}] row {start + offset + 1}", {**{c: rows[c][offset] for c in columns}, SPLIT_KEY: split}
