"""`npcai bench --only chain`: a turn's pipeline in one request against its steps sent one by one.

- latency: a three-step chain (decide an intent, say a line given it, decide an emotion) against the
  same three requests sent one after another by the client, each waiting for the one before, p50
  (target: faster);
- deadlines: the chain under a deadline of about two thirds of its own p50: chains answered after
  their deadline (target: none), and how many steps fell back;
- routing: a route step's model steps (target: at most one), and a routed line against the same line
  sent to its role directly, p50; and the roles a few requests are routed to, against the router's
  prompt before its roles' listing became a cached persona (all in one user turn, under the
  anonymous persona), sent as the same choice decision.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

from npcai.client import Client
from npcai.launcher import Sidecar
from npcai.sidecar.chain import ROUTE_LEAD, substitute

_PERSONA = "You are Brom, the blacksmith of Oakvale. You sell swords and shields."
_STEPS = [
    {"op": "decide", "as": "intent", "npc": "bench-brom", "situation": "A customer asks for a discount on a shield.",
     "choices": ["haggle", "refuse", "agree"], "fallback": "refuse"},
    {"op": "say", "as": "line", "npc": "bench-brom", "text": "Can I have the shield for less? (You {intent}.)",
     "max_tokens": 24, "soft_max_tokens": 24, "seed": 1, "fallback": "Hm."},
    {"op": "decide", "as": "emotion", "situation": "The blacksmith said: {line} How does he feel?",
     "choices": ["happy", "angry", "calm"], "fallback": "calm"},
]


#: Requests and the role that should serve them (roles described as in ``_routing``).
_ROUTED = [("How much is that sword?", "merchant"), ("Do you sell iron shields?", "merchant"),
           ("I want to buy armour for my son.", "merchant"), ("A thief stole my purse!", "guard"),
           ("Two drunks are fighting in the street.", "guard"), ("Someone broke into my house last night.", "guard")]
#: The router's prompt before: roles, descriptions and request in one user turn (anonymous persona).
_LISTED = ("Helpers:\n- merchant: sells weapons and armour and talks about prices\n- guard: keeps the peace and "
           "deals with thieves\n\nRequest: {text}\n\nWhich helper should handle it?")


def _one_by_one(c: Client) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for step in _STEPS:
        fields = substitute(step, values)
        op, name = fields.pop("op"), fields.pop("as")
        reply = c.call(op, **fields)
        values[name] = reply["value"]
    return values


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def run(c: Client, model_path: Path, quick: bool, say: Callable[[str], None]) -> tuple[list[tuple], dict[str, Any]]:
    reps = 6 if quick else 20
    c.npc("bench-brom", _PERSONA, seed=1)
    chained, separate = [], []
    _one_by_one(c), c.chain(_STEPS)  # warm
    for _ in range(reps):  # interleaved; forget keeps both variants' history the same
        c.call("forget", npc="bench-brom")
        chained.append(_timed(lambda: c.chain(_STEPS)))
        c.call("forget", npc="bench-brom")
        separate.append(_timed(lambda: _one_by_one(c)))
    chain_p50, separate_p50 = statistics.median(chained), statistics.median(separate)
    deadline = max(1, int(chain_p50 * 2 / 3))
    late, fell_back = 0, 0
    for _ in range(reps):
        c.call("forget", npc="bench-brom")
        h = c.request("chain", steps=_STEPS, deadline_ms=deadline)
        reply = c.wait(h)
        late += (time.monotonic() - h.sent_at) * 1e3 > deadline + 5 or reply.get("timed_out", False)
        fell_back += sum(bool(s.get("used_fallback")) for s in h.steps)
    rows: list[tuple] = [
        ("intent -> line -> emotion: one chain vs three requests one by one (p50)", round(chain_p50, 1),
         round(separate_p50, 1), "steps sent one by one", "ms", "< 1x"),
        (f"chains under a {deadline} ms deadline answered late (of {reps})", late, None, "", "", "0"),
        (f"... steps that fell back under that deadline (of {3 * reps})", fell_back, None, "", "", ""),
    ]
    raw: dict[str, Any] = {"chain_ms": chained, "one_by_one_ms": separate, "deadline_ms": deadline, "late": late,
                           "fell_back": fell_back}
    say("    chain: routing (a sidecar with roles merchant and guard)")
    route_rows, route_raw = _routing(model_path, reps)
    return rows + route_rows, {**raw, **route_raw}


def _routing(model_path: Path, reps: int) -> tuple[list[tuple], dict[str, Any]]:
    args = ["--model", f"dialogue={model_path}", "--model", f"merchant={model_path}", "--model",
            f"guard={model_path}", "--role-info", "merchant=sells weapons and armour and talks about prices",
            "--role-info", "guard=keeps the peace and deals with thieves"]
    route = {"op": "route", "as": "who", "text": "How much is that sword?", "choices": ["merchant", "guard"]}
    line = {"op": "say", "as": "line", "npc": "bench-brom", "text": "How much is that sword?", "max_tokens": 12,
            "soft_max_tokens": 12, "seed": 2}
    with Sidecar(*args) as sc, Client(sc.endpoint) as c:
        c.hello("bench")
        c.npc("bench-brom", _PERSONA, seed=1)
        steps = [c.chain([{**route, "text": f"{route['text']} ({i})"}])["usage"]["steps"] for i in range(reps)]
        # (each routed request below has a text of its own: a repeated one would come from the step cache)
        routed, direct = [], []
        for i in range(reps):
            c.call("forget", npc="bench-brom")
            routed.append(_timed(lambda: c.chain([{**route, "text": f"How much is that sword, friend? ({i})"},
                                                  {**line, "role": "{who}"}])))
            c.call("forget", npc="bench-brom")
            direct.append(_timed(lambda: c.chain([{**line, "role": "merchant"}])))
        right, right_before = 0, 0
        for text, role in _ROUTED:
            right += c.chain([{**route, "text": text}])["results"]["who"] == role
            right_before += c.decide(_LISTED.format(text=text), choices=["merchant", "guard"],
                                     lead=ROUTE_LEAD)["value"] == role
    rows = [("model steps a route step takes (most)", max(steps), None, "", "steps", "<= 1"),
            (f"requests routed to the right role (of {len(_ROUTED)}): cached listing vs listing in the request",
             right, right_before, "listing in the request", "", ""),
            ("routed line vs the same line sent to its role (p50)", round(statistics.median(routed), 1),
             round(statistics.median(direct), 1), "line without routing", "ms", "")]
    return rows, {"route_steps": steps, "routed_ms": routed, "direct_ms": direct, "routed_right": right,
                  "routed_right_before": right_before}
