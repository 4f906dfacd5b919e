"""`npcai bench`: macro-benchmarks, each side by side with what a developer would otherwise use.

One module per item (transport, decisions, dialogue, many, mixed, cancel, ahead, weights, kv, frame,
quality, startup, remote); ``harness.Bench`` holds what they share, ``report`` the table. This module runs the items.

Every comparison runs in the same process run on the same machine: the sidecar (a
child process, as a game would run it) against llama-cpp-python's high-level API or
against llama.cpp's own forward passes for the same tokens. Results are ratios; a
table goes to stdout and a JSON report (with the machine) to ``--out``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from npcai import __version__
from npcai.bench.ahead import run as run_ahead
from npcai.bench.cancel import run as run_cancel
from npcai.bench.decisions import run as run_decisions
from npcai.bench.dialogue import run as run_dialogue
from npcai.bench.frame import run as run_frame
from npcai.bench.harness import Bench
from npcai.bench.kv import run as run_kv
from npcai.bench.machine_load import OtherLoad
from npcai.bench.many import run as run_many
from npcai.bench.mixed import run as run_mixed
from npcai.bench.report import Report, plot, print_table
from npcai.bench.transport import run as run_transport
from npcai.bench.weights import run as run_weights
from npcai.client import Client
from npcai.errors import NpcaiError

_BUSY_MACHINE_CORES = 0.1  # other processes' use during an item worth a word in the output

ITEMS = ("transport", "decision", "dialogue", "many", "mixed", "cancel", "ahead", "weights", "kv", "frame", "quality",
         "startup", "actions", "chain", "remote")


def _actions(b: Bench, c: Client) -> None:
    from npcai.bench import actions

    rows, b.report.raw["actions"] = actions.run(c, b.quick, b.say)
    for metric, value, baseline, baseline_name, unit, target in rows:
        b.report.add("actions", metric, value, baseline, baseline_name, unit=unit, target=target)


def _chain(b: Bench, c: Client) -> None:
    from npcai.bench import chain

    rows, b.report.raw["chain"] = chain.run(c, b.path, b.quick, b.say)
    for metric, value, baseline, baseline_name, unit, target in rows:
        b.report.add("chain", metric, value, baseline, baseline_name, unit=unit, target=target)


def _quality(b: Bench, c: Client) -> None:
    """Answers worth waiting for: decide beside its anchor, structured answers, dialogue lines."""
    from npcai.bench import quality

    rows, raw = quality.run(c, b.path, b.threads, b.quality_items, quality.data_dir(b.data),
                            b.say)
    for metric, value, baseline, baseline_name, unit, target in rows:
        b.report.add("quality", metric, value, baseline, baseline_name, unit=unit, target=target)
    b.report.raw["quality"] = raw


def _compare_adapter(plain: Report, adapted: Report) -> None:
    """Each set's picks with the adapter against without it, item by item: accuracy side by side and a
    paired sign test. COPA counts its test half only: the shipped adapter was trained on its development half."""
    import numpy as np

    from npcai.bench import quality

    for name in ("game", "copa", "piqa", "arc_easy"):
        before = plain.raw.get("quality", {}).get(name, {}).get("items")
        after = adapted.raw.get("quality", {}).get(name, {}).get("items")
        if not before or not after:
            continue
        if name == "copa":
            before, after = (_copa_test(r) for r in (before, after))
            name = "copa test"
        gained, lost, p = quality.paired(before, after)
        acc = [100 * sum(int(np.argmax(r["probs"])) == r["label"] for r in rs) / len(rs) for rs in (before, after)]
        adapted.raw["quality"].setdefault("paired", {})[name] = {
            "n": len(after), "acc_without": acc[0], "acc_with": acc[1], "gained": gained, "lost": lost,
            "sign_test_p": p}
        adapted.add("quality", f"{name}: decide acc with the adapter vs without (n={len(after)})", acc[1], acc[0],
                    "same sidecar, no --lora", unit="%", target="")
        adapted.add("quality", f"{name}: items the adapter gained vs lost", gained, lost, "items lost", unit="count")
        adapted.add("quality", f"{name}: paired sign test p", p, None, "", unit="p", target="< 0.05")


def _copa_test(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if int(r["id"].split("-")[1]) > 500]  # ids 1-500 are the development half


def run_items(b: Bench, only: set[str] | None) -> Report:
    unknown = sorted(set(only or ()) - set(ITEMS))
    if unknown:
        raise NpcaiError(f"no bench item {', '.join(unknown)}; items: {', '.join(ITEMS)}")
    items = [("transport", run_transport), ("decision", run_decisions), ("dialogue", run_dialogue),
             ("many", run_many), ("mixed", run_mixed), ("cancel", run_cancel), ("ahead", run_ahead),
             ("quality", _quality), ("actions", _actions), ("chain", _chain)]
    items = [(name, fn) for name, fn in items if not only or name in only]
    sc, c = b.sidecar() if items else (None, None)
    try:
        for name, fn in items:
            b.say(f"  {b.model}: {name}…")
            t = time.perf_counter()
            load = OtherLoad([os.getpid(), sc.pid])
            fn(b, c)
            seconds = time.perf_counter() - t
            b.report.raw.setdefault("seconds", {})[name] = round(seconds, 1)
            _note_other_load(b, name, load.cores(seconds))
    finally:
        if sc is not None:
            c.close()
            sc.close()
        b.close()
    if not only or "weights" in only:
        b.say(f"  {b.model}: weights…")
        run_weights(b)
    if not only or "kv" in only:
        b.say(f"  {b.model}: kv…")
        run_kv(b)
    if not only or "frame" in only:
        b.say(f"  {b.model}: frame…")
        run_frame(b)
    if only and "startup" in only:  # builds a bundle (the bundle extra): runs only when named
        from npcai.bench.startup import run as run_startup

        b.say(f"  {b.model}: startup…")
        run_startup(b)
    if only and "remote" in only:  # needs the [remote-test] extra: only when named
        from npcai.bench.remote import run as run_remote

        b.say(f"  {b.model}: remote…")
        run_remote(b)
    return b.report


def _note_other_load(b: Bench, item: str, cores: float | None) -> None:
    """Record, and say when it is large enough to matter, what other processes used during ``item``."""
    if cores is None:
        return
    b.report.raw.setdefault("other_processes_cores", {})[item] = round(cores, 3)
    if cores >= _BUSY_MACHINE_CORES:
        b.say(f"  note: other processes used {cores:.2f} cores during {item}: its timings are not npcai's alone")


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import llama_cpp

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__, "npcai": __version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


#: What ``npcai bench`` runs when no --model is given: both catalog models.
DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")


def _check_start(args: Any, models: list[str], lora: tuple[str, ...], only: set[str] | None) -> None:
    """Each --model, the --lora specs against each model (read as the sidecars will read them) and the quality
    item's data files, before anything runs: a mistake is one line at once, not the end of a run whose first
    passes are then thrown away."""
    from npcai.bench import quality
    from npcai.cli import model_roles
    from npcai.sidecar import adapters

    if args.threads < 0:
        raise NpcaiError(f"bad --threads {args.threads}: give 0 (all cores) or more")
    if not Path(args.out).resolve().parent.is_dir():
        raise NpcaiError(f"bad --out {args.out}: its folder does not exist")
    for m in models:
        roles = model_roles([m])
        if lora:
            adapters.parse(list(lora), roles)
    if not only or "quality" in only:
        quality.check_data(quality.data_dir(args.data))


def run_bench(args: Any) -> int:
    models = args.model or list(DEFAULT_MODELS)
    lora = tuple(getattr(args, "lora", None) or ())
    only = set(args.only) if args.only else None
    _check_start(args, models, lora, only)
    out = lambda s: print(s, flush=True)
    info = machine()
    out(f"npcai bench on {info['cpu']} ({info['cores']} cores), llama-cpp-python {info['llama_cpp_python']}")
    threads = args.threads or os.cpu_count() or 1
    out(f"compute threads: {threads} for the sidecar and for every baseline")
    reports = []
    for m in models:  # with --lora, each model twice, back to back: without its adapter, then with it
        for specs in ((), lora) if lora else ((),):
            reports.append(run_items(Bench(m, args.quick, out, threads, args.data, args.quality_items, specs), only))
        if lora:
            _compare_adapter(reports[-2], reports[-1])
    print_table(reports, out)
    doc = {"machine": {**info, "threads": threads}, "command": " ".join(["npcai", *sys.argv[1:]]),
           "models": {r.model: {"rows": [{**r_.__dict__, "ratio": r_.ratio} for r_ in r.rows], "raw": r.raw}
                      for r in reports}}
    Path(args.out).write_text(json.dumps(doc, indent=1, default=float))
    out(f"\nreport: {args.out}")
    if args.plots:
        for p in plot(reports, Path(args.out)):
            out(f"plot: {p}")
    return 0
