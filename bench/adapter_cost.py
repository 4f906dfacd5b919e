"""What a decision adapter (``--lora decision=...``) costs a choice decision, and the sidecar's memory.

One sidecar started with the adapter for the decision role answers the same choice decisions twice per
round, once through the decision role (scored by the adapter's merged weights) and once through the
dialogue role (the model alone, same runtime, same NPC), taking turns, so both sides see the same moments
of a noisy machine. Then the resident memory (VmRSS) of a sidecar without and one with the adapter, right
after ``hello`` and after a few decisions and a line. Run (under the shared lock here):

    python bench/adapter_cost.py --lora smollm2-135m-decision --rounds 25
    python bench/adapter_cost.py --model gemma3-270m --lora gemma3-270m-decision --rounds 25

A base model (Gemma) cannot serve dialogue, so for it the sidecar serves dialogue with the default model
and the base model on two roles, ``decision`` (with the adapter) and ``plain`` (without), which are timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from npcai import Client, Sidecar
from npcai.model import catalog

GUARD = "You are Hilda, a stern town guard of Oakvale."
CHOICES = ["chase the thief", "buy some bread", "go to sleep", "sing a song"]


def _rss_mib(pid: int) -> dict[str, int]:
    """Resident MiB: all, and the part that is mapped files (weights llama.cpp maps, which the OS can drop and reread)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "RssFile")}


def _roles(model: str) -> tuple[list[str], str]:
    """The sidecar's --model arguments, and the role that serves ``model`` without the adapter."""
    if model == catalog.DEFAULT_MODEL:
        return [], "dialogue"
    return ["--model", f"dialogue={catalog.DEFAULT_MODEL}", "--model", f"decision={model}",
            "--model", f"plain={model}"], "plain"


def latency(model: str, lora: str, rounds: int, threads: int) -> dict:
    """Median ms of a choice decision with and without the adapter, interleaved in one sidecar."""
    models, plain = _roles(model)
    times: dict[str, list[float]] = {"decision": [], plain: []}
    with Sidecar(*models, "--lora", f"decision={lora}", "--threads", str(threads)) as sc, Client(sc.endpoint) as c:
        c.npc("hilda", GUARD)
        for i in range(rounds + 3):
            situation = f"A thief number {i} snatches a purse at the market and runs past you."
            for role in (("decision", plain) if i % 2 else (plain, "decision")):
                t0 = time.perf_counter()
                c.decide(situation, npc="hilda", choices=CHOICES, temperature=0.0, role=role)
                if i >= 3:  # the first rounds compile, load and compute the option set's prior
                    times[role].append((time.perf_counter() - t0) * 1e3)
    with_it, without = statistics.median(times["decision"]), statistics.median(times[plain])
    return {"with_adapter_ms": with_it, "without_ms": without, "ratio": with_it / without, "rounds": rounds}


def memory(model: str, lora: str, threads: int) -> dict:
    """Resident memory in MiB, without and with the adapter."""
    out = {}
    models, _ = _roles(model)
    for label, extra in (("without", []), ("with_adapter", ["--lora", f"decision={lora}"])):
        with Sidecar(*models, "--threads", str(threads), *extra) as sc, Client(sc.endpoint) as c:
            pid = c.hello("adapter_cost")["pid"]
            after_hello = _rss_mib(pid)
            c.npc("hilda", GUARD)
            for i in range(5):
                c.decide(f"A thief {i} snatches a purse.", npc="hilda", choices=CHOICES)
            c.say("hilda", "Good morning, guard!", max_tokens=16)
            out[label] = {"after_hello_mib": after_hello, "after_use_mib": _rss_mib(pid)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=catalog.DEFAULT_MODEL, help="the catalog model the adapter is for")
    p.add_argument("--lora", default="smollm2-135m-decision", help="a shipped adapter's name or a path")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    figures = {"latency": latency(args.model, args.lora, args.rounds, args.threads),
               "memory": memory(args.model, args.lora, args.threads)}
    lat, mem = figures["latency"], figures["memory"]
    print(f"choice decision p50: {lat['with_adapter_ms']:.1f} ms with the adapter, {lat['without_ms']:.1f} without "
          f"({lat['ratio']:.2f}x, {lat['rounds']} rounds, interleaved)")
    for label, m in mem.items():
        hello, use = m["after_hello_mib"], m["after_use_mib"]
        print(f"VmRSS {label}: {hello['VmRSS']} MiB after hello, {use['VmRSS']} after 5 decisions and a line "
              f"(of which mapped files: {hello['RssFile']}, {use['RssFile']})")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
