"""How should an action's arguments read when each combination is an option? The choice behind
``action_options.describe_args``, made on a development set of its own.

Each format is served by a sidecar whose option builder writes the combinations that way; every
situation of ``DEV`` (24, three NPCs, none of them the bench's ``npcai.bench.actions.SITUATIONS``,
which stay held out for reporting) is decided with ``actions: true`` at temperature 0, after one
decision that caches the option set's prior. Printed per format: right actions, right actions with
right arguments, and the p50 of those decisions (docs/PERFORMANCE.md, "Action arguments as words"):

- ``paren``: the description, then "(item: shield, urgent: yes)" (npcai's way before);
- ``colon_kv``: the description, then ": shield, urgent" ("not urgent" when false, "nights 2");
- ``colon_vk``: as ``colon_kv`` with numbers value first ("2 nights");
- ``paren_v``: the description, then the values of ``colon_kv`` in brackets: "(shield, urgent)"; ``popen_v``
  the same without the closing bracket, ``pspace_v`` with a space after the opening one, ``comma_v`` after a
  comma, ``space_v`` after a space (session 17, docs/PERFORMANCE.md "Session 17: arguments in brackets").

Run:

    python bench/action_words.py smollm2-135m      # about 1 minute a format on 2 cores
    python bench/action_words.py smollm2-135m colon_kv,paren_v   # some of them
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from npcai.sidecar import action_options as ao


def _enum(key: str, values: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: {"enum": values}}, "required": [key]}


def _flag(key: str) -> dict[str, Any]:
    return {"type": "object", "properties": {key: {"type": "boolean"}}, "required": [key]}


NPCS = {
    "dev-elsa": ("You are Elsa, the healer of Millbrook. You brew potions and tend the sick and wounded.", [
        {"name": "sell_potion", "description": "sell the visitor a potion",
         "args": _enum("potion", ["healing", "sleep", "strength"])},
        {"name": "treat", "description": "treat the patient's wound", "args": _flag("urgent")},
        {"name": "send_away", "description": "send the visitor away"}]),
    "dev-hal": ("You are Hal, the stable master of Millbrook. You rent out horses and sell feed.", [
        {"name": "rent_horse", "description": "rent the traveller a horse",
         "args": {"type": "object", "properties": {"days": {"type": "integer", "minimum": 1, "maximum": 3}},
                  "required": ["days"]}},
        {"name": "sell_feed", "description": "sell the customer animal feed",
         "args": _enum("feed", ["oats", "hay", "apples"])},
        {"name": "refuse", "description": "refuse the request"}]),
    "dev-finn": ("You are Finn, the ferryman of the river Lune. You row people across and keep the river safe.", [
        {"name": "ferry", "description": "row the passenger across",
         "args": _enum("to", ["north_bank", "island", "mill"])},
        {"name": "warn", "description": "warn people about danger", "args": _flag("loud")},
        {"name": "wait", "description": "wait for more passengers"}]),
}
DEV = [
    ("dev-elsa", "A tired woman says she cannot sleep at night and pays you five coins.", "sell_potion",
     {"potion": "sleep"}),
    ("dev-elsa", "A soldier wants something to make him stronger before the battle.", "sell_potion",
     {"potion": "strength"}),
    ("dev-elsa", "A hunter with a small scratch asks for a potion to heal it later.", "sell_potion",
     {"potion": "healing"}),
    ("dev-elsa", "A man is carried in, bleeding badly from a deep cut.", "treat", {"urgent": True}),
    ("dev-elsa", "A girl shows you an old, small cut on her finger that has almost healed.", "treat",
     {"urgent": False}),
    ("dev-elsa", "A rude merchant demands free potions and insults you.", "send_away", {}),
    ("dev-elsa", "A farmer falls from his cart and his leg is badly broken.", "treat", {"urgent": True}),
    ("dev-elsa", "A drunk wants to buy ale from you.", "send_away", {}),
    ("dev-hal", "A traveller needs a horse for a two-day journey and pays.", "rent_horse", {"days": 2}),
    ("dev-hal", "A messenger needs a horse for one day only.", "rent_horse", {"days": 1}),
    ("dev-hal", "A knight wants a horse for three days and pays in full.", "rent_horse", {"days": 3}),
    ("dev-hal", "A farmer wants a sack of oats for his horse.", "sell_feed", {"feed": "oats"}),
    ("dev-hal", "A woman asks for a bale of hay for her cows.", "sell_feed", {"feed": "hay"}),
    ("dev-hal", "A boy wants apples to feed his pony.", "sell_feed", {"feed": "apples"}),
    ("dev-hal", "A stranger with no money asks to take your best horse.", "refuse", {}),
    ("dev-hal", "A thief asks to borrow a horse for free, no questions asked.", "refuse", {}),
    ("dev-finn", "A merchant asks you to take him to the island.", "ferry", {"to": "island"}),
    ("dev-finn", "A miller needs to get back to the mill across the river.", "ferry", {"to": "mill"}),
    ("dev-finn", "A traveller pays to cross to the north bank.", "ferry", {"to": "north_bank"}),
    ("dev-finn", "You see children playing near the flooding river far away.", "warn", {"loud": True}),
    ("dev-finn", "A quiet old man next to you is about to step on a slippery rock.", "warn", {"loud": False}),
    ("dev-finn", "Your boat has room for six, and only one passenger has arrived.", "wait", {}),
    ("dev-finn", "A storm is coming and boats are still out on the water.", "warn", {"loud": True}),
    ("dev-finn", "Nobody is at the dock yet and it is early morning.", "wait", {}),
]


def _words(args: dict[str, Any], value_first: bool) -> str:
    parts = []
    for k, v in args.items():
        key = k.replace("_", " ")
        if isinstance(v, bool):
            parts.append(key if v else f"not {key}")
        elif isinstance(v, (int, float)):
            parts.append(f"{v} {key}" if value_first else f"{key} {v}")
        else:
            parts.append(str(v).replace("_", " "))
    return ", ".join(parts)


def _paren(args: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        return ("yes" if v else "no") if isinstance(v, bool) else str(v).replace("_", " ")
    return " (" + ", ".join(f"{k.replace('_', ' ')}: {value(v)}" for k, v in args.items()) + ")"


FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {
    "paren": _paren,
    "colon_kv": lambda a: ": " + _words(a, False),
    "colon_vk": lambda a: ": " + _words(a, True),
    "paren_v": lambda a: " (" + _words(a, False) + ")",
    "popen_v": lambda a: " (" + _words(a, False),
    "pspace_v": lambda a: " ( " + _words(a, False),
    "comma_v": lambda a: ", " + _words(a, False),
    "space_v": lambda a: " " + _words(a, False),
}


def serve(fmt: str, args: list[str]) -> int:
    """``npcai serve`` whose combinations read as ``fmt`` says."""
    suffix, built = FORMATS[fmt], ao.options

    def options(actions: list[dict[str, Any]], words: dict[str, str]) -> list[ao.Option]:
        return [ao.Option(o.key, o.name, o.args, words[o.name] + suffix(o.args) if o.combo else o.words, o.combo)
                for o in built(actions, words)]

    ao.options = options
    from npcai.cli import main
    return main(["serve", *args])


def measure(fmt: str, model: str) -> dict[str, Any]:
    from npcai.client import Client
    from npcai.launcher import Sidecar
    program = [sys.executable, __file__, "--serve", fmt]
    with Sidecar("--model", model, "--threads", "2", program=program) as sc, Client(sc.endpoint) as c:
        for npc, (persona, actions) in NPCS.items():
            c.npc(npc, persona, actions=actions, seed=1)
            c.decide("Someone comes by.", npc=npc, actions=True)  # the option set's prior, cached
        name = both = 0
        ms, answers = [], []
        for npc, situation, right, args in DEV:
            t = time.perf_counter()
            got = c.decide(situation, npc=npc, actions=True)["value"]
            ms.append((time.perf_counter() - t) * 1e3)
            answers.append(got)
            name += got["name"] == right
            both += got == {"name": right, "args": args}
    return {"format": fmt, "right_action": name, "right_both": both, "of": len(DEV),
            "p50_ms": round(statistics.median(ms), 1), "answers": answers}


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2], sys.argv[3:]))
    for fmt in sys.argv[2].split(",") if len(sys.argv) > 2 else FORMATS:
        print(json.dumps(measure(fmt, sys.argv[1])), flush=True)
