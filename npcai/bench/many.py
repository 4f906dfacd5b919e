"""`bench --only many`: many NPCs talking at once."""

from __future__ import annotations

import time

from npcai.bench.harness import Bench
from npcai.bench.report import pct
from npcai.bench.workload import (
    LINES,
)
from npcai.client import Client


def run(b: Bench, c: Client) -> None:
    counts = [1, 2, 4, 8] if b.quick else [1, 2, 4, 8, 16]
    raw = {}
    def ceiling(n: int) -> float:  # ~persona + line + reply in each sequence
        return n / (b.forward_ms(100, [n] * 8, seqs=n) / 8 / 1000)

    for n in counts:
        before = ceiling(n)  # and again after the streams: drift in this machine's speed falls on both
        for k in range(n):
            c.npc(f"crowd{k}", b.personas[k % 4], seed=k)
        handles = [c.request("say", npc=f"crowd{k}", text=LINES[k % 4], max_tokens=32, temperature=0.8)
                   for k in range(n)]
        stamps: dict[int, list[float]] = {h.id: [] for h in handles}
        seen = {h.id: 0 for h in handles}
        while not all(h.finished for h in handles):
            c.poll(max_messages=256, budget_us=20_000)
            now = time.perf_counter()
            for h in handles:
                while seen[h.id] < len(h.chunks):
                    stamps[h.id].append(now)
                    seen[h.id] += 1
            c.wait_for_reply(0.005)  # block, not spin: a spinning client steals a core
        # Steady state: from the moment every stream has started until the first one ends.
        lo = max(s[0] for s in stamps.values() if s)
        hi = min(s[-1] for s in stamps.values() if s)
        inside = sum(1 for s in stamps.values() for t in s if lo < t <= hi)
        agg = inside / (hi - lo) if hi > lo else 0.0
        gaps = [(b - a) * 1000 for s in stamps.values() for a, b in zip(s, s[1:])]
        top = (before + ceiling(n)) / 2
        b.report.add("many", f"{n} streams: aggregate tokens/s", agg, top, f"one batch of {n} tokens",
                        unit="tok/s", target=">= 0.85x")
        b.report.add("many", f"{n} streams: inter-token p99", pct(gaps, 99), None, unit="ms")
        raw[n] = {"aggregate_tok_s": agg, "ceiling_tok_s": top, "gap_p99_ms": pct(gaps, 99)}
    b.report.raw["many"] = raw
