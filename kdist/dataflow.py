"""Ray Data pieces that stages share: joins by key sized for the cluster and the data.

Ray Data's hash join shuffles both sides into `num_partitions` partitions held by aggregator
actors; on a small machine those actors must ask for a fraction of a CPU, or they starve the
readers that feed them (on 2 cores, whole-CPU stages wait on each other forever).
"""

from __future__ import annotations

from typing import Any

AGGREGATOR_CPUS = 0.1
ROWS_PER_PARTITION = 250_000


def join(left: Any, right: Any, on: tuple[str, ...], rows: int, how: str = "inner") -> Any:
    """`left` joined with `right` on the key columns; `rows` (about the larger side) sizes
    the partitions."""
    partitions = max(1, min(64, -(-rows // ROWS_PER_PARTITION)))
    return left.join(
        right, join_type=how, num_partitions=partitions, on=on,
        aggregator_ray_remote_args={"num_cpus": AGGREGATOR_CPUS},
    )  # fmt: skip
