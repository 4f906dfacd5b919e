"""What llama-cpp-python's server does to NPCs talking at once, with and without its
``--interrupt_requests`` (default true): the measurement behind docs/DEPLOY.md, "Settings a
llama.cpp server needs".

One sidecar with both roles served by ``python -m llama_cpp.server`` (1 thread), 8 NPCs, each
sends a 16-token ``say`` at the same moment; two rounds per setting. Printed per round: each line's
``finish_reason`` (``unavailable`` when the server cut its stream) and its tokens.

Run from the checkout (about 1 minute on 2 cores):

    python bench/remote_interrupt.py smollm2-135m
"""

from __future__ import annotations

import sys

from npcai.client import Client
from npcai.launcher import Sidecar
from npcai.model import catalog
from npcai.remote.llama_server import LlamaServer

LINES = ["Can you fix my sword?", "What is the news in the village?", "Do you sell shields?",
         "Who was here before me?", "Is the road north safe?", "What do you make today?"]
NPCS, ROUNDS = 8, 2


def main(model: str) -> None:
    path = catalog.resolve(model)
    for interrupt in ("true", "false"):
        with LlamaServer(path, threads=1, extra=("--interrupt_requests", interrupt)) as server, \
                Sidecar("--model", f"dialogue={server.url}", "--model", f"decision={server.url}", "--nice", "0") as sc, \
                Client(sc.endpoint) as c:
            c.hello("remote_interrupt")
            for i in range(NPCS):
                c.npc(f"n{i}", "You are Brom, the village smith. You speak briefly.")
            for r in range(ROUNDS):
                handles = [c.request("say", npc=f"n{i}", text=LINES[i % len(LINES)], max_tokens=16, temperature=0.0)
                           for i in range(NPCS)]
                ends = [c.wait(h, 300) for h in handles]
                print(f"--interrupt_requests {interrupt}, round {r}:",
                      [(e.get("finish_reason") or e.get("code"), e.get("tokens")) for e in ends], flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")
