"""The bench's report: rows side by side with their baselines, the table, the plots."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from npcai.errors import NpcaiError


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def median_ms(fn: Callable[[], Any], reps: int) -> float:
    """The median wall time of ``reps`` calls of ``fn``, in milliseconds."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class Row:
    item: str
    metric: str
    npcai: float | None
    baseline: float | None = None
    baseline_name: str = ""
    unit: str = "ms"
    target: str = ""

    @property
    def ratio(self) -> float | None:
        if self.npcai is None or not self.baseline:
            return None
        return round(self.npcai / self.baseline, 3)


@dataclass
class Report:
    model: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, *args: Any, **kw: Any) -> None:
        self.rows.append(Row(*args, **kw))


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("count",):
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def print_table(reports: list[Report], out: Callable[[str], None]) -> None:
    for rep in reports:
        out(f"\n{rep.model}")
        out(f"  {'item':<10} {'metric':<46} {'npcai':>10} {'baseline':>10} {'ratio':>7}  {'unit':<6} {'target':<16} vs")
        for r in rep.rows:
            out(f"  {r.item:<10} {r.metric:<46} {_fmt(r.npcai, r.unit):>10} {_fmt(r.baseline, r.unit):>10} "
                f"{(f'{r.ratio:.2f}x' if r.ratio is not None else '-'):>7}  {r.unit:<6} {r.target:<16} "
                f"{r.baseline_name}")


def plot(reports: list[Report], path: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NpcaiError("plots need matplotlib: pip install -e '.[bench]'") from None
    written = []
    for rep in reports:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key in zip(axes, ("decision_choice", "decision_json")):
            d = rep.raw.get(key)
            if not d:
                continue
            ax.boxplot([d["npcai_ms"], d["gbnf_ms"], d["model_only_ms"]],
                       labels=["npcai", "llama-cpp-python\nGBNF", "forward passes\nalone"])
            ax.set_title(f"{rep.model}: {key.replace('_', ' ')}")
            ax.set_ylabel("ms")
        out = path.with_name(f"{path.stem}-{rep.model}.png")
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written
