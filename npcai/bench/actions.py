"""`npcai bench --only actions`: are action calls valid, and what does an action decision cost?

- validity: NPCs declare actions whose argument schemas hypothesis generates (enums of ids, bounded
  integers, booleans, short strings, one to three properties); every ``decide`` and ``say`` with
  actions must answer an allowed action whose arguments validate against its schema (target: 100 %);
- cost: an action decision against a choice decision over the same names and descriptions, p50
  (target: at most 1.25x), for actions with and without arguments.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def _p50(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def cost(c: Client, reps: int) -> list[tuple[str, float, float]]:
    """(what, action decision p50 ms, choice decision p50 ms)."""
    out = []
    with_args = {"type": "object", "properties": {"item": {"enum": ["sword", "shield", "nails"]}},
                 "required": ["item"]}
    for label, args in (("without args", None), ("with one enum arg", with_args)):
        actions = [{"name": n, "description": d, **({"args": args} if args else {})}
                   for n, d in (("sell", "sell the customer an item"), ("refuse", "refuse the deal"),
                                ("call_guard", "call the guard"))]
        c.npc("bench-cost", _PERSONA, actions=actions, seed=1)
        names = [a["name"] for a in actions]
        words = {a["name"]: a["description"] for a in actions}
        situation = "A customer walks in with 20 gold."
        act = lambda: c.decide(situation, npc="bench-cost", actions=["sell"] if args else True)  # noqa: E731
        choose = lambda: c.decide(situation, npc="bench-cost", choices=names, descriptions=words)  # noqa: E731
        act(), choose()  # warm: priors cached, schema compiled
        a_ms, c_ms = [], []
        for _ in range(reps):  # interleaved, so that both see the same machine
            a_ms.append(_p50(act, 1))
            c_ms.append(_p50(choose, 1))
        out.append((label, statistics.median(a_ms), statistics.median(c_ms)))
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
    return rows, {"valid": valid, "calls": calls, "invalid": bad[:10],
                  "cost_ms": [{"what": w, "action": a, "choice": b} for w, a, b in figures]}
