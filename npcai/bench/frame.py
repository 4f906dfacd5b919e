"""`bench --only frame`: the game's frame times beside the sidecar, idle and under load."""

from __future__ import annotations

import json
import os
import sys

from npcai.bench.harness import Bench
from npcai.bench.report import pct
from npcai.bench.workload import (
    _BUDGETED,
)
from npcai.client import Client
from npcai.errors import NpcaiError
from npcai.launcher import Sidecar


def run(b: Bench) -> None:
    """The game's frame times beside an idle sidecar, then under load with four configurations."""
    seconds = 6.0 if b.quick else 15.0
    cores = str(os.cpu_count() or 1)
    cases = [("idle", [], ["--idle"]),
             ("load, no budget (nice 0, all cores)", ["--nice", "0", "--threads", cores], []),
             ("load, polite defaults", [], []),
             (_BUDGETED, ["--frame-ms", "16.7", "--budget-tokens-per-s", "40"], ["--report-frames"]),
             ("load, tight budget (share 0.5) + frame reports", ["--frame-ms", "16.7", "--budget-share", "0.5"],
              ["--report-frames"])]
    work = 0
    raw = {}
    for name, serve_args, game_args in cases:
        with Sidecar("--model", b.model, *serve_args) as sc:
            cmd = [sys.executable, "-m", "npcai.bench.gameloop", sc.endpoint, "--seconds", str(seconds),
                   "--work", str(work), *game_args]
            import subprocess

            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120)
            if proc.returncode != 0:
                raise NpcaiError(f"game loop failed: {proc.stderr.strip().splitlines()[-1:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            with Client(sc.endpoint) as c:
                res["budget"] = c.call("stats")["engine"]["budget"]
        work = work or res["work"]
        f = res["frames_ms"]
        raw[name] = {"p50": pct(f, 50), "p99": pct(f, 99), "max": max(f),
                     "missed_pct": 100 * sum(x > 1000 / 60 for x in f) / len(f),
                     "late_10pct": 100 * sum(x > 1.1 * 1000 / 60 for x in f) / len(f),
                     "tokens_s": res["tokens"] / res["seconds"],
                     "decisions_in_time_pct": 100 * res["decisions_in_time"] / res["decisions"]
                     if res["decisions"] else None,
                     "budget": res["budget"]}
    idle = raw["idle"]["p99"]
    for name, d in raw.items():
        b.report.add("frame", f"{name}: frame p99", d["p99"], idle, "idle sidecar",
                        target="<= 1.10x" if name == _BUDGETED else "")
        # A paced frame measures 16.7 ms plus timer jitter, so "missed" means over 10 % late.
        b.report.add("frame", f"{name}: missed frames (> 18.4 ms)", d["late_10pct"], unit="%",
                        target="<= 1%" if name == _BUDGETED else "")
        if name != "idle":
            b.report.add("frame", f"{name}: decisions in time", d["decisions_in_time_pct"], unit="%",
                            target=">= 90%" if name == _BUDGETED else "")
            b.report.add("frame", f"{name}: sidecar tokens/s", d["tokens_s"], unit="tok/s")
    b.report.raw["frame"] = raw
