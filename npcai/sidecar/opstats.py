"""Per-op counters and latency percentiles, as ``stats`` reports them."""

from __future__ import annotations

import collections
from typing import Any

_LATENCY_WINDOW = 2048


class OpStats:
    """One op's counts, and its latest latencies (a window, so memory stays bounded)."""

    def __init__(self) -> None:
        self.count = self.errors = self.timeouts = self.cancelled = 0
        self.latency_ms: collections.deque[float] = collections.deque(maxlen=_LATENCY_WINDOW)

    def to_wire(self) -> dict[str, Any]:
        lat = sorted(self.latency_ms)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

        return {"count": self.count, "errors": self.errors, "timeouts": self.timeouts, "cancelled": self.cancelled,
                "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": lat[-1] if lat else None}
