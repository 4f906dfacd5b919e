"""A synthetic game for the frame-budget benchmark: 60 frames a second, fixed CPU work per frame.

Run as its own process (`python -m npcai.bench.gameloop ENDPOINT ...`) so it competes for the
CPU with the sidecar like a real game. Each frame it does a fixed amount of work, polls
the client within a budget, keeps 8 NPCs talking and asks for a decision 10 times a
second (150 ms deadline), optionally reports its frame times, then sleeps to the next
frame. It prints one JSON line: its frame times and what the sidecar delivered.
"""

from __future__ import annotations

import argparse
import json
import time

from npcai.client import Client

FRAME_S = 1 / 60
LINES = ["Tell me about the village.", "What do you sell?", "Any news from the road?", "Who rules these lands?"]
CHOICES = ["attack", "flee", "hide", "talk", "trade", "wait"]


def busy(iterations: int) -> int:
    """The frame's fixed CPU work (physics, AI, rendering prep, stand-in)."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) & 0xFFFFFF
    return acc


def calibrate(target_s: float) -> int:
    """Iterations of ``busy`` that take ``target_s`` on this machine, measured now."""
    n = 20_000
    while True:
        t = time.perf_counter()
        busy(n)
        took = time.perf_counter() - t
        if took > 0.02:
            return max(1, int(n * target_s / took))
        n *= 2


def play(endpoint: str, seconds: float, work: int, load: bool, report_frames: bool) -> dict:
    c = Client(endpoint)
    c.hello("gameloop")
    npcs = [f"villager{k}" for k in range(8)]
    if load:
        for k, n in enumerate(npcs):
            c.npc(n, f"You are villager number {k} of Oakvale. Answer in one short sentence.", seed=k)
        c.npc("goblin", "You are a cowardly goblin guarding a bridge.")
    streams = {n: None for n in npcs} if load else {}
    decisions = []
    tokens = 0
    frames: list[float] = []
    unreported: list[float] = []
    start = time.perf_counter()
    next_frame = start
    next_decision = start
    last = start
    while last - start < seconds:
        busy(work)
        if load:
            for n, h in streams.items():
                if h is None or h.finished:
                    if h is not None:
                        tokens += len(h.chunks)
                    streams[n] = c.request("say", npc=n, text=LINES[len(frames) % 4], max_tokens=32)
            if last >= next_decision:
                decisions.append((last, c.request("decide", npc="goblin", situation="A knight rides up.",
                                                   choices=CHOICES, deadline_ms=150, fallback="wait")))
                next_decision += 0.1
        if report_frames and len(unreported) >= 6:
            c.request("frame", frame_ms=unreported)
            unreported = []
        c.poll(max_messages=64, budget_us=1000)
        next_frame += FRAME_S
        delay = next_frame - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_frame = time.perf_counter()  # a missed frame: the next one starts now
        now = time.perf_counter()
        frames.append((now - last) * 1000)
        unreported.append(frames[-1])
        last = now
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline and not all(h.finished for _, h in decisions):
        c.poll(max_messages=256, budget_us=5000)
        time.sleep(0.002)
    tokens += sum(len(h.chunks) for h in streams.values() if h is not None)
    in_time = sum(1 for _, h in decisions if h.finished and not h.reply.get("used_fallback"))
    c.close()
    return {"frames_ms": frames, "tokens": tokens, "seconds": seconds, "decisions": len(decisions),
            "decisions_in_time": in_time}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--work", type=int, default=0, help="busy iterations per frame (0 = calibrate to half a frame)")
    p.add_argument("--idle", action="store_true", help="send no requests")
    p.add_argument("--report-frames", action="store_true")
    a = p.parse_args()
    work = a.work or calibrate(FRAME_S / 2)
    result = play(a.endpoint, a.seconds, work, not a.idle, a.report_frames)
    result["work"] = work
    print(json.dumps(result))


if __name__ == "__main__":
    main()
