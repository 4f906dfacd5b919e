"""Other processes' CPU use while a bench item ran: a run taken beside another busy process is
not a measurement of npcai.

llama.cpp's compute threads meet at a barrier after every operation of a step, spinning; when
another process takes one of the cores, the threads that kept theirs spin until it comes back. With
as many compute threads as cores (the bench's `--threads 2` on a 2-core machine) a step of one token
then took 0.5-3 s instead of 10 ms, so one such moment decides a mixed-load run. The bench reports
what the rest of the machine used, per item, so that a reader can tell such runs apart.

Linux only (``/proc``); elsewhere the figure is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle, iowait = fields[3], fields[4] if len(fields) > 4 else 0
    return (sum(fields[:8]) - idle - iowait) / _HZ  # user..softirq and steal; guest time is inside user


def _process_s(pid: int) -> float | None:
    """CPU seconds process ``pid`` has used (user + system, all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _HZ


class OtherLoad:
    """Started before an item and read after it: the CPU seconds that processes other than ``pids``
    (the bench and its sidecar) used meanwhile, and that as cores' worth of the item's wall time."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self._start = self._sample()

    def _sample(self) -> tuple[float, float] | None:
        busy = _busy_s()
        ours = [_process_s(p) for p in self.pids]
        if busy is None or any(v is None for v in ours):
            return None
        return busy, sum(ours)  # type: ignore[arg-type]

    def cores(self, seconds: float) -> float | None:
        """Other processes' average use, in cores, over the ``seconds`` the item took (None off Linux)."""
        end = self._sample()
        if self._start is None or end is None or seconds <= 0:
            return None
        other = (end[0] - self._start[0]) - (end[1] - self._start[1])
        return max(0.0, other) / seconds
