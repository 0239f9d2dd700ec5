"""Peak resident memory of this process per training phase (Linux /proc; elsewhere a no-op).

A phase's peak is the process's high-water mark (VmHWM) while the phase ran: the mark is reset
to the current RSS on entering a phase (writing 5 to /proc/self/clear_refs), read on leaving.
Phases entered several times (steps, validation) keep their largest peak. Figures are MiB
above the RSS before the model was loaded (the baseline), so that a worker's imports and
Ray's own footprint do not count. RSS rarely falls (the allocator keeps freed memory), so a
phase's peak includes what earlier phases left; `rise` is what the phase itself added (its
peak above the RSS it started with): that says where the memory goes.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mib(key: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:  # not Linux, or a kernel that refuses: peaks then span from the start
        return False


class PhaseMemory:
    """Records the peak RSS of each phase; `baseline` is taken at construction."""

    def __init__(self) -> None:
        self.baseline = _status_mib("VmRSS")
        self.peaks: dict[str, float] = {}
        self.rises: dict[str, float] = {}
        self.resettable = _reset_peak()

    @contextmanager
    def phase(self, name: str):
        _reset_peak()
        entry = _status_mib("VmRSS")
        try:
            yield
        finally:
            peak = _status_mib("VmHWM")
            if peak is not None and self.baseline is not None:
                self.peaks[name] = max(self.peaks.get(name, 0.0), peak - self.baseline)
                self.rises[name] = max(self.rises.get(name, 0.0), peak - entry)

    def as_dict(self) -> dict:
        return {"baseline_mib": round(self.baseline or 0.0, 1),
                "peak_above_baseline_mib": {k: round(v, 1) for k, v in self.peaks.items()},
                "rise_mib": {k: round(v, 1) for k, v in self.rises.items()},
                "per_phase": self.resettable}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=1))
