"""`bench --only ahead`: a decision after observe (thinking ahead) against one that sends its situation."""

from __future__ import annotations

import time

from npcai.bench.harness import Bench
from npcai.bench.report import pct
from npcai.bench.workload import (
    CHOICES,
    SITUATIONS,
)
from npcai.client import Client


def run(b: Bench, c: Client) -> None:
    c.npc("grik", b.persona)
    told, seen = [], []
    for i in range(b.reps // 2 or 2):
        situation = SITUATIONS[i % 6]
        c.call("forget", npc="grik")
        t = time.perf_counter()
        c.decide(situation, npc="grik", choices=CHOICES)
        told.append((time.perf_counter() - t) * 1000)
        c.call("forget", npc="grik")
        c.call("observe", npc="grik", text=situation)
        time.sleep(0.6)  # the game keeps playing; the sidecar evaluates the event in spare steps
        t = time.perf_counter()
        c.decide("What do you do now?", npc="grik", choices=CHOICES)
        seen.append((time.perf_counter() - t) * 1000)
    b.report.add("ahead", "decision after observe (p50)", pct(seen, 50), pct(told, 50),
                    "situation sent with the decision")
