"""`bench --only dialogue`: time to first token and rate of an NPC's lines, against llama-cpp-python."""

from __future__ import annotations

import statistics
import time

from npcai.bench.harness import Bench
from npcai.bench.report import pct
from npcai.bench.workload import (
    _READ_S,
    LINES,
)
from npcai.client import Client


def run(b: Bench, c: Client) -> None:
    c.npc("brom", b.personas[0])
    warm, cold, usage = [], [], []
    for i in range(b.reps):
        c.call("forget", npc="brom")
        h = c.request("say", npc="brom", text=LINES[i % len(LINES)], max_tokens=4)
        warm.append(b.ttft(c, h))
        usage.append(h.reply["usage"])
    state = c.call("save", npc="brom")["state"]
    for i in range(max(4, b.reps // 3)):
        c.call("load", npc=f"cold{i}", state=state)  # defined but never evaluated: a cold persona
        cold.append(b.ttft(c, c.request("say", npc=f"cold{i}", text=LINES[i % len(LINES)], max_tokens=4)))
    own = [b.forward_ms(u["cached_tokens"], [u["prompt_tokens"]]) for u in usage[:6]]
    r = b.report
    r.add("dialogue", "first token, cached persona (p50)", pct(warm, 50), pct(own, 50),
          "llama.cpp prefill of the new tokens", target="<= 1.2x")
    r.add("dialogue", "first token, cold persona (p50)", pct(cold, 50), pct(warm, 50), "cached persona")
    # Four NPCs taking turns. The baseline is sent each NPC's persona and the same history, so
    # both sides answer identical prompts: one from its NPC's cached sequence, one from its single cache.
    for k, p in enumerate(b.personas):
        c.npc(f"turn{k}", p)
    history: list[list[dict[str, str]]] = [[{"role": "system", "content": p}] for p in b.personas]
    prompts: list[list[dict[str, str]]] = []
    turns, paced = [], []
    for i in range(2 * b.reps):  # the second half with the time a player takes to read and answer
        if i >= b.reps:
            time.sleep(_READ_S)
        k, line = i % 4, LINES[i % len(LINES)]
        h = c.request("say", npc=f"turn{k}", text=line, max_tokens=4)
        (turns if i < b.reps else paced).append(b.ttft(c, h))
        history[k].append({"role": "user", "content": line})
        prompts.append(list(history[k]))
        history[k].append({"role": "assistant", "content": h.reply["text"]})
    lcp, lcp_paced = b.llama_turns(prompts[:b.reps]), b.llama_turns(prompts[b.reps:], pause=_READ_S)
    r.add("dialogue", "first token, 4 NPCs taking turns (p50)", pct(turns, 50), pct(lcp, 50),
          "llama-cpp-python stream=True", target=">= 2.5x faster")
    r.add("dialogue", f"... with {_READ_S * 1000:.0f} ms to read between lines (p50)", pct(paced, 50),
          pct(lcp_paced, 50), "llama-cpp-python stream=True", target=">= 2.5x faster")
    forgetful = b.llama_turns([[p[0], p[-1]] for p in prompts[:b.reps]])
    r.add("dialogue", "... baseline sent no history, only persona and line (p50)", pct(turns, 50),
          pct(forgetful, 50), "llama-cpp-python stream=True")
    # One stream's decode rate.
    rates = []
    for i in range(3 if b.quick else 6):
        c.npc("solo", b.personas[0])
        rates.append(b.rate(c, c.request("say", npc="solo", text=LINES[i % 4], max_tokens=48,
                                             temperature=0.0)))
    base = b.llama_rate(48)
    r.add("dialogue", "one stream, tokens/s", statistics.median(rates), base, "llama-cpp-python stream",
          unit="tok/s", target=">= 0.95x")
    b.report.raw["dialogue"] = {"ttft_warm_ms": warm, "ttft_cold_ms": cold, "own_ms": own,
                                   "turns_ms": turns, "llama_turns_ms": lcp, "paced_turns_ms": paced,
                                   "llama_paced_turns_ms": lcp_paced,
                                   "llama_turns_no_history_ms": forgetful, "rates": rates}
