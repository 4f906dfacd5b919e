"""Does an NPC act right after it answers? `say` with `actions`, scored on player lines with a right action.

The demo's trade showed the place where actions are weakest: after a line, the NPC picks an action (or
none) two turns from the words that say which. Each item here is a player's line to an NPC with actions,
and the action a designer would want after the NPC's answer (``None``: just keep talking, as after small
talk) with its arguments. Two sets, each on NPCs of its own: ``dev`` (bench/action_words.py's healer,
stable master and ferryman: choices of wording are made on it) and ``held`` (the smith, innkeeper and
guard of `npcai bench --only actions`: reported, never tuned on). Every line is said to the NPC
defined afresh with each of ``--seeds`` seeds, so the answer it acts after is drawn anew each time.
Printed per set: right actions (none counts as an action), right actions with right arguments.

    python bench/action_lines.py smollm2-135m --seeds 3 --json /tmp/lines.json
    python bench/action_lines.py smollm2-135m -- --lora dialogue=smollm2-135m-decision

Arguments after ``--`` go to the sidecar (`npcai serve`'s flags).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import action_words

from npcai import Client, Sidecar
from npcai.bench import actions as bench_actions

#: (npc, the player's line, the right action or None, its arguments).
Item = tuple[str, str, "str | None", dict[str, Any]]

DEV: list[Item] = [
    ("dev-elsa", "I can't sleep at night. Do you have something for that? Here are five coins.", "sell_potion",
     {"potion": "sleep"}),
    ("dev-elsa", "My friend is bleeding badly, please help him now!", "treat", {"urgent": True}),
    ("dev-elsa", "Give me your potions for free or I'll wreck this place.", "send_away", {}),
    ("dev-elsa", "I need something to make me strong for the fight tomorrow.", "sell_potion", {"potion": "strength"}),
    ("dev-elsa", "What a lovely herb garden you have.", None, {}),
    ("dev-elsa", "Here's a coin for a healing potion.", "sell_potion", {"potion": "healing"}),
    ("dev-elsa", "There's an old scratch on my hand that has nearly healed. Could you look at it?", "treat",
     {"urgent": False}),
    ("dev-elsa", "How did you learn so much about herbs?", None, {}),
    ("dev-hal", "I need a horse for two days. Here's the money.", "rent_horse", {"days": 2}),
    ("dev-hal", "A sack of oats for my mare, please.", "sell_feed", {"feed": "oats"}),
    ("dev-hal", "Lend me your best horse. I won't pay, and don't ask why.", "refuse", {}),
    ("dev-hal", "I ride to the next town and back today. One horse, please.", "rent_horse", {"days": 1}),
    ("dev-hal", "My cows need hay. Sell me a bale.", "sell_feed", {"feed": "hay"}),
    ("dev-hal", "Fine horses you keep here.", None, {}),
    ("dev-hal", "Some apples for my pony, please.", "sell_feed", {"feed": "apples"}),
    ("dev-hal", "A horse for three days, paid in full.", "rent_horse", {"days": 3}),
    ("dev-finn", "Take me to the island, please.", "ferry", {"to": "island"}),
    ("dev-finn", "I need to get back to the mill across the river.", "ferry", {"to": "mill"}),
    ("dev-finn", "Look, children are playing by the flooding river over there!", "warn", {"loud": True}),
    ("dev-finn", "Is the water cold today?", None, {}),
    ("dev-finn", "Here's a coin to cross to the north bank.", "ferry", {"to": "north_bank"}),
    ("dev-finn", "Are you leaving now? Your boat is almost empty.", "wait", {}),
    ("dev-finn", "A storm is coming and boats are still out on the water!", "warn", {"loud": True}),
    ("dev-finn", "Lovely morning on the river, isn't it?", None, {}),
]

HELD: list[Item] = [
    ("bench-brom", "Here are 20 gold for a shield.", "sell", {"item": "shield"}),
    ("bench-brom", "I need a sword for the road. Here is the money.", "sell", {"item": "sword"}),
    ("bench-brom", "Two coins for a bag of nails, please.", "sell", {"item": "nails"}),
    ("bench-brom", "I'll give you one copper for your finest sword.", "refuse", {}),
    ("bench-brom", "Help! Someone just grabbed a sword from your wall and ran!", "call_guard", {"urgent": True}),
    ("bench-brom", "Good morning, Brom. Lovely weather today.", None, {}),
    ("bench-brom", "Give me a shield for free, old man.", "refuse", {}),
    ("bench-brom", "How long have you been a smith?", None, {}),
    ("bench-brom", "There's a fire in the shop next door!", "call_guard", {"urgent": True}),
    ("bench-brom", "I'll take that shield. Here's your full price.", "sell", {"item": "shield"}),
    ("bench-mara", "A mug of ale, please. Here's a coin.", "serve", {"dish": "ale"}),
    ("bench-mara", "I'm starving. A bowl of your stew, please.", "serve", {"dish": "stew"}),
    ("bench-mara", "Just a piece of bread for me.", "serve", {"dish": "bread"}),
    ("bench-mara", "I need a room for two nights.", "rent_room", {"nights": 2}),
    ("bench-mara", "A bed for tonight only, please.", "rent_room", {"nights": 1}),
    ("bench-mara", "A room for three nights. Here's the gold.", "rent_room", {"nights": 3}),
    ("bench-mara", "I'll smash every chair in this inn and fight anyone who stops me!", "throw_out", {}),
    ("bench-mara", "What a cozy inn you have.", None, {}),
    ("bench-mara", "Which road goes to the capital?", None, {}),
    ("bench-mara", "I'm going to break every bottle in here!", "throw_out", {}),
    ("bench-tom", "Guard! A fight broke out at the tavern!", "go_to", {"place": "tavern"}),
    ("bench-tom", "Quick, a stall is being robbed in the market!", "go_to", {"place": "market"}),
    ("bench-tom", "A cart overturned at the gate and blocks the road.", "go_to", {"place": "gate"}),
    ("bench-tom", "Here are my papers. May I enter the town?", "let_pass", {}),
    ("bench-tom", "That thief just stole my apples, right there!", "arrest", {"who": "thief"}),
    ("bench-tom", "This drunk is throwing bottles at people!", "arrest", {"who": "drunk"}),
    ("bench-tom", "Good evening, officer. Quiet night?", None, {}),
    ("bench-tom", "I'm a merchant with a permit. Can I pass?", "let_pass", {}),
    ("bench-tom", "What time does the market open?", None, {}),
    ("bench-tom", "A stranger is climbing over the town wall!", "arrest", {"who": "stranger"}),
]

SETS: dict[str, tuple[dict[str, tuple[str, list[dict]]], list[Item]]] = {
    "dev": (action_words.NPCS, DEV), "held": (bench_actions.NPCS, HELD)}


def probe(model: str, seeds: int, sets: list[str], threads: int, sidecar_args: list[str]) -> list[dict]:
    rows = []
    with Sidecar("--threads", str(threads), "--model", model, *sidecar_args) as sc, Client(sc.endpoint) as c:
        for name in sets:
            npcs, items = SETS[name]
            for npc, line, action, args in items:
                persona, declared = npcs[npc]
                for seed in range(1, seeds + 1):
                    c.npc(npc, persona, actions=declared, seed=seed)
                    reply = c.say(npc, line, actions=True, max_tokens=48, stop=["\n"])
                    got = reply["action"]
                    rows.append({"set": name, "npc": npc, "line": line, "seed": seed, "text": reply["text"],
                                 "right": {"name": action, "args": args}, "got": got,
                                 "action_right": (got or {}).get("name") == action,
                                 "both_right": (got is None and action is None) or got == {"name": action, "args": args},
                                 "probs": reply["action_probs"]})
    return rows


def summary(rows: list[dict]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        s = out.setdefault(r["set"], {"lines": 0, "action_right": 0, "both_right": 0})
        s["lines"] += 1
        s["action_right"] += r["action_right"]
        s["both_right"] += r["both_right"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default="smollm2-135m")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sets", default="dev,held")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write every answer here")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    rows = probe(args.model, args.seeds, args.sets.split(","), args.threads, extra)
    for name, s in summary(rows).items():
        print(f"{args.model} {name}: {s['lines']} lines, right action {s['action_right']}, "
              f"right action and arguments {s['both_right']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "summary": summary(rows), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
