"""Choice-decision latency of several checkouts, interleaved request by request.

On a shared, noisy machine, back-to-back bench runs minutes apart differ by more than the change
being measured. Here one sidecar per checkout runs at once (idle ones cost nothing) and the
decisions alternate between them, so load falls on all alike. Each sidecar imports its own
checkout through PYTHONPATH: run this from a folder that holds no `npcai` package (e.g. /tmp).
The client side is the checkout this file belongs to. The decision is `npcai bench`'s: Grik's
persona, its six situations and six options.

    cd /tmp && python3 /path/to/bench/choice_latency_interleaved.py 40 before=/path/a after=/path/b
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npcai import Client, Sidecar  # noqa: E402
from npcai.bench.workload import CHOICES, SITUATIONS  # noqa: E402
from npcai.demo import load_scenario  # noqa: E402


def main(reps: int, checkouts: dict[str, str]) -> dict:
    persona = load_scenario(None)["npcs"]["grik"]["persona"]
    cars, clients = {}, {}
    try:
        for name, path in checkouts.items():
            cars[name] = Sidecar("--model", "smollm2-135m", "--threads", "2", env={"PYTHONPATH": path}).__enter__()
            clients[name] = Client(cars[name].endpoint).__enter__()
            clients[name].npc("grik", persona)
            clients[name].decide(SITUATIONS[-1], npc="grik", choices=CHOICES)  # warm: prior and caches
        lat: dict[str, list[float]] = {n: [] for n in checkouts}
        for i in range(reps):
            for name in checkouts:
                t = time.perf_counter()
                clients[name].decide(SITUATIONS[i % len(SITUATIONS)], npc="grik", choices=CHOICES)
                lat[name].append((time.perf_counter() - t) * 1e3)
    finally:
        for name in clients:
            clients[name].__exit__(None, None, None)
        for name in cars:
            cars[name].__exit__(None, None, None)
    first = statistics.median(next(iter(lat.values())))
    summary = {}
    for name, v in lat.items():
        p50, p90 = statistics.median(v), sorted(v)[int(0.9 * len(v))]
        summary[name] = {"p50_ms": p50, "p90_ms": p90, "vs_first": p50 / first}
        print(f"{name:24s} p50 {p50:7.1f} ms   p90 {p90:7.1f} ms   {p50 / first:5.2f}x the first")
    return {"command": " ".join(sys.argv), "reps": reps, "summary": summary, "raw_ms": lat}


if __name__ == "__main__":
    report = main(int(sys.argv[1]), dict(arg.split("=", 1) for arg in sys.argv[2:]))
    print(json.dumps(report))
