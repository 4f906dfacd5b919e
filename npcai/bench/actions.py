"""`npcai bench --only actions`: are action calls valid, and what does an action decision cost?

- validity: NPCs declare actions whose argument schemas hypothesis generates (enums of ids, bounded
  integers, booleans, short strings, one to three properties); every ``decide`` and ``say`` with
  actions must answer an allowed action whose arguments validate against its schema (target: 100 %);
- cost: an action decision against a choice decision over the same names and descriptions, p50
  (target: at most 1.25x), for actions with and without arguments; and an NPC's first action decision
  against its second (the first once also scored its options' prior);
- picks: on a small set of shop, inn and guard situations with a right action and arguments each
  (``SITUATIONS``), how often the action and its arguments are right, one option tree for both
  (the sidecar's way for small argument spaces) against the two decisions one after the other
  (a choice over the names, then a schema decision for the arguments: the sidecar's way before,
  and still its way for open argument spaces), with each way's p50.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npcai.bench.harness import until_idle
from npcai.bench.report import median_ms
from npcai.client import Client

_PERSONA = "You are Brom, the blacksmith of Oakvale. You sell swords, shields and nails."
_IDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
_PROPERTY = st.one_of(
    st.lists(_IDS, min_size=1, max_size=6, unique=True).map(lambda ids: {"enum": ids}),
    st.tuples(st.integers(-50, 50), st.integers(0, 100)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]}),
    st.just({"type": "boolean"}),
    st.integers(1, 12).map(lambda n: {"type": "string", "maxLength": n}),
)
_ARGS = st.dictionaries(st.sampled_from(["item", "target", "place", "count", "loud", "note"]), _PROPERTY,
                        min_size=0, max_size=3).map(
    lambda props: {"type": "object", "properties": props, "required": sorted(props)})
_VERBS = ["give the customer an item", "refuse the deal", "call the guard", "close the shop", "fix a weapon"]


def _valid(action: Any, declared: dict[str, dict]) -> bool:
    if not isinstance(action, dict) or action.get("name") not in declared:
        return False
    try:
        jsonschema.validate(action["args"], declared[action["name"]])
    except jsonschema.ValidationError:
        return False
    return True


def validity(c: Client, n: int) -> tuple[int, int, list[Any]]:
    """(valid, calls, the invalid answers) over ``n`` generated action sets, a decide and a say each."""
    calls, valid, bad = 0, 0, []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(_ARGS, min_size=1, max_size=3), st.integers(0, 2**32 - 1))
    def check(schemas: list[dict], seed: int) -> None:
        nonlocal calls, valid
        actions = [{"name": f"act_{i}", "description": _VERBS[i % len(_VERBS)], "args": s}
                   for i, s in enumerate(schemas)]
        declared = {a["name"]: a["args"] for a in actions}
        c.npc("bench-actor", _PERSONA, actions=actions, seed=seed % 1000)
        answers = [c.decide("A customer walks in with 20 gold.", npc="bench-actor", actions=True, temperature=1.0,
                            seed=seed)["value"]]
        line = c.say("bench-actor", "I have 20 gold. What can you do for me?", actions=True, seed=seed,
                     max_tokens=16)
        if line["action"] is not None:
            answers.append(line["action"])
        for a in answers:
            calls += 1
            if _valid(a, declared):
                valid += 1
            else:
                bad.append(a)

    check()
    return valid, calls, bad


def cost(c: Client, reps: int) -> list[tuple[str, float, float]]:
    """(what, action decision p50 ms, choice decision p50 ms)."""
    out = []
    with_args = {"type": "object", "properties": {"item": {"enum": ["sword", "shield", "nails"]}},
                 "required": ["item"]}
    urgent = {"type": "object", "properties": {"urgent": {"type": "boolean"}}, "required": ["urgent"]}
    for label, args, guard_args in (("without args", None, None), ("with one enum arg", with_args, None),
                                    ("over all three, two with enum or boolean args", with_args, urgent)):
        actions = [{"name": n, "description": d, **({"args": a} if a else {})}
                   for n, d, a in (("sell", "sell the customer an item", args), ("refuse", "refuse the deal", None),
                                   ("call_guard", "call the guard", guard_args))]
        c.npc("bench-cost", _PERSONA, actions=actions, seed=1)
        names = [a["name"] for a in actions]
        words = {a["name"]: a["description"] for a in actions}
        situation = "A customer walks in with 20 gold."
        only_sell = args is not None and guard_args is None
        act = lambda: c.decide(situation, npc="bench-cost", actions=["sell"] if only_sell else True)  # noqa: E731
        choose = lambda: c.decide(situation, npc="bench-cost", choices=names, descriptions=words)  # noqa: E731
        act(), choose()  # warm: priors cached, schema compiled
        a_ms, c_ms = [], []
        for _ in range(reps):  # interleaved, so that both see the same machine
            a_ms.append(median_ms(act, 1))
            c_ms.append(median_ms(choose, 1))
        out.append((label, statistics.median(a_ms), statistics.median(c_ms)))
    return out


def first_action(c: Client, reps: int) -> tuple[float, float]:
    """(first, second) action decision p50 ms of NPCs defined with actions, each after one line. An NPC is
    defined ahead of its first scene (at level load), so the sidecar has spare steps in between."""
    actions = NPCS["bench-brom"][1]
    first, second = [], []
    for i in range(reps):
        npc = f"bench-first-{i}"
        c.npc(npc, f"{_PERSONA} Your shop is number {i + 1} on the street.", actions=actions, seed=i)
        until_idle(c, 10)
        c.say(npc, "Good day, smith.", max_tokens=16)
        act = lambda: c.decide("A customer walks in with 20 gold.", npc=npc, actions=True)  # noqa: E731
        first.append(median_ms(act, 1))
        second.append(median_ms(act, 1))
    return statistics.median(first), statistics.median(second)


_ITEM = {"type": "object", "properties": {"item": {"enum": ["sword", "shield", "nails"]}}, "required": ["item"]}
#: NPCs with actions whose arguments are enums, integers in a range or booleans, and situations with
#: their right action and arguments: (npc, situation, name, args).
NPCS = {
    "bench-brom": ("You are Brom, the blacksmith of Oakvale. You sell swords, shields and nails, and you keep your "
                   "shop safe.", [
                       {"name": "sell", "description": "sell the customer an item", "args": _ITEM},
                       {"name": "refuse", "description": "refuse the deal"},
                       {"name": "call_guard", "description": "call the guard",
                        "args": {"type": "object", "properties": {"urgent": {"type": "boolean"}},
                                 "required": ["urgent"]}}]),
    "bench-mara": ("You are Mara, the innkeeper of the Golden Goose. You serve stew, bread and ale, and rent rooms.", [
        {"name": "serve", "description": "serve the guest food or drink",
         "args": {"type": "object", "properties": {"dish": {"enum": ["stew", "bread", "ale"]}}, "required": ["dish"]}},
        {"name": "rent_room", "description": "rent a room to the guest",
         "args": {"type": "object", "properties": {"nights": {"type": "integer", "minimum": 1, "maximum": 3}},
                  "required": ["nights"]}},
        {"name": "throw_out", "description": "throw the guest out"}]),
    "bench-tom": ("You are Tom, a guard of the town of Oakvale. You keep the peace.", [
        {"name": "go_to", "description": "hurry to a place in town",
         "args": {"type": "object", "properties": {"place": {"enum": ["gate", "market", "tavern"]}},
                  "required": ["place"]}},
        {"name": "arrest", "description": "arrest someone",
         "args": {"type": "object", "properties": {"who": {"enum": ["thief", "drunk", "stranger"]}},
                  "required": ["who"]}},
        {"name": "let_pass", "description": "let the traveller pass"}]),
}
SITUATIONS = [
    ("bench-brom", "A customer puts 20 gold on the counter and points at the shield.", "sell", {"item": "shield"}),
    ("bench-brom", "A traveller wants a blade for the road and pays you 30 gold.", "sell", {"item": "sword"}),
    ("bench-brom", "A carpenter needs a bag of nails and hands you two coins.", "sell", {"item": "nails"}),
    ("bench-brom", "A man offers you one copper coin for your best sword.", "refuse", {}),
    ("bench-brom", "A masked man grabs a sword from the wall and runs out of the shop.", "call_guard", {"urgent": True}),
    ("bench-brom", "A boy asks for a shield but has no money at all.", "refuse", {}),
    ("bench-brom", "Someone has set fire to the shop next door and is running away.", "call_guard", {"urgent": True}),
    ("bench-mara", "A thirsty farmer asks for a mug of ale and pays.", "serve", {"dish": "ale"}),
    ("bench-mara", "A hungry traveller asks for a hot bowl of stew.", "serve", {"dish": "stew"}),
    ("bench-mara", "A child asks for a piece of bread.", "serve", {"dish": "bread"}),
    ("bench-mara", "A merchant pays for a room for two nights.", "rent_room", {"nights": 2}),
    ("bench-mara", "A pilgrim wants a bed for tonight only.", "rent_room", {"nights": 1}),
    ("bench-mara", "A knight pays for a room for three nights.", "rent_room", {"nights": 3}),
    ("bench-mara", "A drunk guest breaks a chair and starts a fight.", "throw_out", {}),
    ("bench-tom", "The bell rings: a fight has broken out at the tavern.", "go_to", {"place": "tavern"}),
    ("bench-tom", "Someone shouts that a stall is being robbed in the market.", "go_to", {"place": "market"}),
    ("bench-tom", "A cart has overturned at the gate and is blocking the road.", "go_to", {"place": "gate"}),
    ("bench-tom", "A merchant with valid papers asks to enter the town.", "let_pass", {}),
    ("bench-tom", "You catch a thief stealing apples right in front of you.", "arrest", {"who": "thief"}),
    ("bench-tom", "A drunk man is shouting insults and throwing bottles at people.", "arrest", {"who": "drunk"}),
]


def _two_decisions(c: Client, npc: str, situation: str) -> dict[str, Any]:
    """The action as two decisions, as the sidecar made it before option trees took its arguments:
    a choice over the names (scored by their descriptions), then a schema decision for the arguments."""
    declared = {a["name"]: a for a in NPCS[npc][1]}
    words = {n: a["description"] for n, a in declared.items()}
    name = c.decide(situation, npc=npc, choices=list(declared), descriptions=words)["value"]
    if "args" not in declared[name]:
        return {"name": name, "args": {}}
    args = c.decide(f"{situation.strip()}\n\nYou are going to {words[name]} ({name}).", npc=npc,
                    schema=declared[name]["args"])["value"]
    return {"name": name, "args": args}


def picks(c: Client) -> dict[str, dict[str, Any]]:
    """Each way's right actions, right actions with right arguments, and p50 ms over ``SITUATIONS``."""
    for npc, (persona, actions) in NPCS.items():
        c.npc(npc, persona, actions=actions, seed=1)
    ways = {"one option tree": lambda npc, s: c.decide(s, npc=npc, actions=True)["value"],
            "two decisions": lambda npc, s: _two_decisions(c, npc, s)}
    out: dict[str, dict[str, Any]] = {w: {"name": 0, "both": 0, "ms": [], "answers": []} for w in ways}
    for npc, situation, name, args in SITUATIONS:
        for way, decide in ways.items():
            t = time.perf_counter()
            got = decide(npc, situation)
            r = out[way]
            r["ms"].append((time.perf_counter() - t) * 1e3)
            r["name"] += got["name"] == name
            r["both"] += got == {"name": name, "args": args}
            r["answers"].append(got)
    return out


def run(c: Client, quick: bool, say: Callable[[str], None]) -> tuple[list[tuple], dict[str, Any]]:
    """Rows (metric, value, baseline, baseline name, unit, target) and raw figures."""
    n = 10 if quick else 40
    say(f"    actions: validity over {n} generated action sets")
    valid, calls, bad = validity(c, n)
    rows: list[tuple] = [("action calls valid (decide + say, generated schemas)", round(100.0 * valid / calls, 1),
                          None, "", "%", "100 %")]
    figures = cost(c, 8 if quick else 30)
    for label, act_ms, choice_ms in figures:
        rows.append((f"action decision {label} vs choice decision, same names (p50)", round(act_ms, 1),
                     round(choice_ms, 1), "decide with choices", "ms", "<= 1.25x"))
    first, second = first_action(c, 4 if quick else 12)
    rows.append(("an NPC's first action decision, after a line, vs its second (p50)", round(first, 1),
                 round(second, 1), "its second", "ms", ""))
    say(f"    actions: picks on {len(SITUATIONS)} situations, one option tree against two decisions")
    right = picks(c)
    tree, two = right["one option tree"], right["two decisions"]
    n = len(SITUATIONS)
    rows += [(f"right action, of {n} situations: one option tree vs two decisions", tree["name"], two["name"],
              "two decisions", "", ""),
             (f"right action and arguments, of {n}: one option tree vs two decisions", tree["both"], two["both"],
              "two decisions", "", ""),
             ("those decisions' p50: one option tree vs two decisions", round(statistics.median(tree["ms"]), 1),
              round(statistics.median(two["ms"]), 1), "two decisions", "ms", "")]
    return rows, {"valid": valid, "calls": calls, "invalid": bad[:10], "first_action_ms": [first, second],
                  "cost_ms": [{"what": w, "action": a, "choice": b} for w, a, b in figures], "picks": right}
