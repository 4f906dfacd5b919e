"""`bench --only cancel`: how soon a cancelled line frees the model."""

from __future__ import annotations

import time

from npcai.bench.harness import Bench
from npcai.bench.report import pct
from npcai.client import Client


def run(b: Bench, c: Client) -> None:
    c.npc("talker", b.personas[1])
    text = " ".join(["The caravan from the eastern hills brought silk, salt and rumours of war."] * 40)
    lat = []
    for i in range(3 if b.quick else 8):
        c.call("forget", npc="talker")
        h = c.request("say", npc="talker", text=text + f" ({i})", max_tokens=4)
        time.sleep(0.08)  # well inside the long prefill
        t = time.perf_counter()
        c.request("cancel", target=h.id)
        reply = c.wait(h, 60)
        lat.append((time.perf_counter() - t) * 1000)
        if reply["event"] != "cancelled":
            lat.pop()
    chunk = b.forward_ms(0, [b.settings.n_batch])
    b.report.add("cancel", "cancel -> cancelled during a long prefill (p50)", pct(lat, 50), chunk,
                    f"one {b.settings.n_batch}-token prefill chunk")
    b.report.raw["cancel_ms"] = lat
