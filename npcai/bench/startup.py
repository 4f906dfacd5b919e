"""`npcai bench --only startup`: how soon a game can talk to its sidecar, `npcai serve` beside the bundle.

For both: process start to ``NPCAI READY``, cold (empty user caches: no numba cache, no bundle verification
record) and warm (the second start with the same caches), and the first answer after READY (hello, an NPC
defined, an 8-token line). For the bundle also its build time and its size without models, by largest parts.
The bundle is built here, by `npcai bundle`, for the benched model (needs the bundle extra).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from npcai.bench.harness import Bench
from npcai.client import Client
from npcai.protocol import READY_PREFIX


def run(b: Bench) -> None:
    """Add the startup rows and raw figures to ``b.report``."""
    report, model, threads, quick, say = b.report, b.model, b.threads, b.quick, b.say
    from npcai.bundle.builder import build_bundle, check_can_build, executable_name
    from npcai.model import catalog

    check_can_build()
    path = catalog.resolve(model)
    reps_cold, reps_warm = (1, 3) if quick else (3, 5)
    with tempfile.TemporaryDirectory(prefix="npcai-bench-startup-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        folder = build_bundle(work / "bundle", [model], log=_Quiet())
        build_s = time.perf_counter() - t
        say(f"    bundle built in {build_s:.0f} s")
        serve = [sys.executable, "-m", "npcai", "serve", "--model", str(path)]
        bundled = [str(folder / executable_name())]
        raw: dict = {"build_s": round(build_s, 1), "threads": threads,
                     "commands": {"serve": " ".join(serve[1:]), "bundle": executable_name()}}
        for name, cmd in (("serve", serve), ("bundle", bundled)):
            cold, warm, first = [], [], []
            for i in range(reps_cold):
                home = work / f"{name}-home-{i}"
                cold.append(_start(cmd, threads, home, first))
                for _ in range(reps_warm if i == 0 else 0):
                    warm.append(_start(cmd, threads, home, first))
            raw[name] = {"cold_s": cold, "warm_s": warm, "first_answer_s": first}
            say(f"    {name}: cold {statistics.median(cold):.2f} s, warm {statistics.median(warm):.2f} s")
        sizes = _sizes(folder)
        raw["size_mb"] = sizes
    s, b = raw["serve"], raw["bundle"]
    med = statistics.median
    report.add("startup", "start to READY, warm (median)", med(b["warm_s"]) * 1e3, med(s["warm_s"]) * 1e3,
               "npcai serve", target="<= 1.2x")
    report.add("startup", "start to READY, cold: empty user caches (median)", med(b["cold_s"]) * 1e3,
               med(s["cold_s"]) * 1e3, "npcai serve", target="< 5000 ms")
    report.add("startup", "first answer after READY (hello, npc, 8-token say)", med(b["first_answer_s"]) * 1e3,
               med(s["first_answer_s"]) * 1e3, "npcai serve")
    report.add("startup", "bundle size without models", sizes["without_models"], unit="MB", target="< 250 MB")
    report.raw["startup"] = raw


def _start(cmd: list[str], threads: int, home: Path, first: list[float]) -> float:
    """Seconds from process start to READY; appends the first answer's seconds to ``first``."""
    env = _user_dirs(home)
    t = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--threads", str(threads), "--nice", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        ready = time.perf_counter() - t
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"{cmd[0]} did not start: {line!r} {proc.stderr.read()[-2000:]}")
        t = time.perf_counter()
        with Client(line[len(READY_PREFIX):].strip()) as c:
            c.hello("npcai bench startup")
            c.npc("brom", "You are Brom, the gruff village blacksmith.", seed=1)
            c.say("brom", "Can you fix my sword?", max_tokens=8)
        first.append(time.perf_counter() - t)
        return ready
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _user_dirs(home: Path) -> dict[str, str]:
    """This environment with fresh per-user caches under ``home`` (a new home: a cold start)."""
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
            "NUMBA_CACHE_DIR": str(home / ".cache" / "numba"), "NPCAI_CACHE": str(home / ".cache" / "npcai")}


def _sizes(folder: Path) -> dict:
    """MB: the whole bundle, without models, and its largest parts."""
    def mb(paths) -> float:
        return round(sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink()) / 1e6, 1)

    internal = folder / "_internal"
    parts = {p.name: mb(p.rglob("*")) if p.is_dir() else mb([p]) for p in internal.iterdir()}
    top = dict(sorted(parts.items(), key=lambda kv: -kv[1])[:10])
    total, models = mb(folder.rglob("*")), mb((folder / "models").rglob("*"))
    return {"total": total, "models": models, "without_models": round(total - models, 1),
            "executable": mb([p for p in folder.iterdir() if p.is_file()]), "largest": top}


class _Quiet:
    """Swallows the builder's progress lines inside the bench's own output."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
