"""`bench --only mixed`: decisions while NPCs are talking."""

from __future__ import annotations

import statistics
import time
from typing import Any

from npcai.bench.harness import Bench
from npcai.bench.workload import (
    CHOICES,
    LINES,
    SITUATIONS,
)
from npcai.client import Client


def _decision_alone_ms(c: Client) -> float:
    """The mixed item's decision with nothing else running (the first, which also scores the options'
    prior, untimed): what each of the ten a second costs on this machine at the moment."""
    times = []
    for k in range(6):
        reply = c.decide(SITUATIONS[k], npc="grik", choices=CHOICES)
        if k:
            times.append(reply["timing"]["total_ms"])
    return statistics.median(times)


def run(b: Bench, c: Client) -> None:
    seconds = 5.0 if b.quick else 15.0
    for k in range(8):
        c.npc(f"mix{k}", b.personas[k % 4], seed=k)
    c.npc("grik", b.persona)
    alone = _decision_alone_ms(c)
    streams = {k: c.request("say", npc=f"mix{k}", text=LINES[k % 4], max_tokens=48) for k in range(8)}
    decisions: list[tuple[float, Any]] = []
    start = time.perf_counter()
    next_decision = start
    stream_tokens = 0
    while time.perf_counter() - start < seconds:
        now = time.perf_counter()
        if now >= next_decision:
            h = c.request("decide", npc="grik", situation=SITUATIONS[len(decisions) % 6], choices=CHOICES,
                          deadline_ms=150, fallback="flee")
            decisions.append((now, h))
            next_decision += 0.1
        c.poll(max_messages=256, budget_us=5_000)
        for k, h in list(streams.items()):
            if h.finished:
                stream_tokens += len(h.chunks)
                streams[k] = c.request("say", npc=f"mix{k}", text=LINES[(k + len(decisions)) % 4],
                                       max_tokens=48)
        for t0, h in decisions:
            if h.finished and not hasattr(h, "arrived"):
                h.arrived = time.perf_counter()
        c.wait_for_reply(max(0.0, min(0.005, next_decision - time.perf_counter())))
    end = time.perf_counter() + 2
    while time.perf_counter() < end and not all(h.finished for _, h in decisions):
        c.poll(max_messages=256, budget_us=5_000)
        for t0, h in decisions:
            if h.finished and not hasattr(h, "arrived"):
                h.arrived = time.perf_counter()
        c.wait_for_reply(0.005)
    for h in streams.values():
        stream_tokens += len(h.chunks)
        c.request("cancel", target=h.id)
    answered = sum(1 for _, h in decisions if h.finished and not h.reply.get("used_fallback"))
    fallback = sum(1 for _, h in decisions if h.finished and h.reply.get("used_fallback"))
    late = sum(1 for t0, h in decisions if h.finished and (h.arrived - t0) * 1000 > 150 + 25)
    late_server = sum(1 for _, h in decisions if h.finished and not h.reply.get("timed_out")
                      and h.reply["timing"]["total_ms"] > 150)
    n = len(decisions)
    r = b.report
    r.add("mixed", "decisions answered in time", answered / n * 100, unit="%", target=">= 95%")
    r.add("mixed", "decisions answered with fallback", fallback / n * 100, unit="%")
    r.add("mixed", "late answers (server clock)", late_server, unit="count", target="0")
    r.add("mixed", "arrived > deadline + 25 ms (client clock)", late, unit="count")
    r.add("mixed", "dialogue tokens/s meanwhile", stream_tokens / seconds, unit="tok/s")
    # Ten decisions a second at this cost each: the share of the machine they take before any stream
    # gets a token. Near or over 80 %, a decision that arrives during another's step misses its deadline
    # (docs/PERFORMANCE.md, section 4), so this says how hard the round was on this machine, now.
    r.add("mixed", "a decision alone, before the load (p50)", alone, unit="ms")
    r.add("mixed", "decisions' share of the machine (10/s x alone)", 10 * alone / 1000 * 100, unit="%")
    b.report.raw["mixed"] = {"decisions": n, "answered": answered, "fallback": fallback, "late_client": late,
                                "late_server": late_server}
