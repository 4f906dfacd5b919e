"""A remote role's first token while a local role of the same sidecar is busy: the measurement
behind docs/PERFORMANCE.md, "Remote requests skip the engine thread (session 6)".

One sidecar with ``decision`` local (the catalog model, 1 thread) and ``dialogue`` served by
``python -m llama_cpp.server`` (the same model, 1 thread, ``--interrupt_requests false``). A second
client keeps the local role busy with back-to-back 3-way choice decisions; meanwhile the probe
sends ``forget`` then a 8-token ``say`` to the remote role, N times, and times its first token the
way ``npcai bench --only remote`` does. Before session 6 every remote request went through the
engine thread, which serves one request between the local model's steps; now one whose NPC has
nothing queued there skips it (npcai/remote/direct.py), and ``stats``' ``remote.direct`` says how
many did.

Run under the shared lock, with the checkout to measure first on ``PYTHONPATH`` (about 30 s):

    cd /tmp && PYTHONPATH=<checkout> python3 <checkout>/bench/remote_beside_local.py 30
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from npcai.client import Client
from npcai.launcher import Sidecar
from npcai.model.catalog import DEFAULT_MODEL, resolve
from npcai.remote.llama_server import LlamaServer

PERSONA = "You are Brom, the blacksmith of a small village. You answer in one short sentence."


def main(n: int) -> None:
    with LlamaServer(resolve(DEFAULT_MODEL), threads=1, extra=("--interrupt_requests", "false")) as server, \
            Sidecar("--model", f"decision={DEFAULT_MODEL}", "--model", f"dialogue={server.url}", "--threads", "1",
                    "--nice", "0") as sc:
        stop = threading.Event()
        decisions: list[float] = []

        def busy() -> None:
            with Client(sc.endpoint) as b:
                b.hello("busy")
                b.npc("guard", "You are a town guard.", role="decision")
                while not stop.is_set():
                    t = time.perf_counter()
                    b.call("decide", npc="guard", situation="A stranger runs at the gate.",
                           choices=["close the gate", "wave him in", "call for help"], timeout=60)
                    decisions.append((time.perf_counter() - t) * 1e3)

        with Client(sc.endpoint) as c:
            c.hello("probe")
            c.npc("smith", PERSONA)
            c.call("say", npc="smith", text="Hello!", max_tokens=4, temperature=0.0, timeout=60)  # connections
            worker = threading.Thread(target=busy, daemon=True)
            worker.start()
            time.sleep(2.0)
            firsts: list[float] = []
            for _ in range(n):
                c.call("forget", npc="smith")
                t0 = time.perf_counter()
                h = c.request("say", npc="smith", text="Can you fix my sword?", max_tokens=8, temperature=0.0)
                while True:  # poll, look, then wait (as the bench: a wait first would sleep through a token)
                    c.poll()
                    if h.chunks or h.finished:
                        break
                    c.wait_for_reply(1.0)
                firsts.append((time.perf_counter() - t0) * 1e3)
                c.wait(h, 60)
                time.sleep(0.05)
            stop.set()
            worker.join(60)
            remote = c.call("stats")["engine"].get("remote", {})
    f = np.array(firsts)
    print(json.dumps({"first_token_ms_p50": round(float(np.percentile(f, 50)), 2),
                      "p90": round(float(np.percentile(f, 90)), 2), "max": round(float(f.max()), 2), "n": n,
                      "local_decisions": len(decisions),
                      "decision_p50_ms": round(float(np.percentile(decisions, 50)), 1) if decisions else None,
                      "remote_stats": remote, "samples": [round(x, 2) for x in firsts]}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
