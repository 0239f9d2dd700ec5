"""The peers that benchmarks compare kdist with (issue 19) live in .venv-bench only
(`make bench-setup`): a check that they are there, and their versions for the JSON line."""

from __future__ import annotations

import importlib.util
import sys


def require(*modules: str) -> None:
    """Exit 2 in one line when a peer is missing (kdist's own .venv has none of them)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"--peers: {', '.join(missing)} not installed here (run `make bench-setup` and "
              f"use .venv-bench/bin/python)", file=sys.stderr)
        raise SystemExit(2)


def versions(*packages: str) -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in packages}
