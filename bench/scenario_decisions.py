"""How a scenario's choice decisions fall over drawn histories (issue 13: "the demo's decisions must be sensible").

`npcai demo` asks each decision once, after the NPC's two lines drawn at one seed. A decision
that is a near tie flips when those lines are drawn differently (another seed, another model,
another rounding), so one run says little. This plays the demo's part of a scenario for each
seed in turn: the NPC defined with that seed, the scenario's first two lines said to it, then
each of its choice decisions at temperature 0; and the scenario's trade, as the demo plays it (the
NPC defined afresh with that seed and its actions, the trade's line said with ``actions``). It
reports, per decision, how often each option was picked and its mean probability, and the lowest
and highest probability of the options the scenario marks as not sensible (``"not_sensible"`` in
the decision or the trade, if any; the trade's options are its action names and ``(none)``), and for the
trade, the arguments each action came with and how often they were those its ``right_args`` expects.

    python bench/scenario_decisions.py --seeds 20
    python bench/scenario_decisions.py --seeds 20 --scenario my_scene.json -- --model decision=gemma3-270m

Arguments after ``--`` go to the sidecar (`npcai serve`'s flags: --model, --lora, --threads).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from npcai import Client, Sidecar
from npcai.demo import load_scenario
from npcai.errors import NpcaiError
from npcai.sidecar.actions import NO_ACTION


def probe(scene: dict, seeds: int, sidecar_args: list[str]) -> list[dict]:
    """Per choice decision: its picks and probabilities over ``seeds`` drawn histories."""
    decisions = [d for d in scene.get("decisions", []) if "choices" in d]
    out = [{"npc": d.get("npc"), "situation": d["situation"], "picks": Counter(), "probs": []} for d in decisions]
    with Sidecar(*sidecar_args) as sc, Client(sc.endpoint) as c:
        c.hello("scenario_decisions")
        for seed in range(1, seeds + 1):
            for npc in {d["npc"] for d in decisions if d.get("npc")}:
                c.npc(npc, scene["npcs"][npc]["persona"], seed=seed)
                for line in scene["npcs"][npc].get("lines", [])[:2]:  # as the demo does
                    c.say(npc, line, max_tokens=48, stop=["\n"])
            for d, row in zip(decisions, out):
                kind = {k: d[k] for k in ("choices", "descriptions") if k in d}
                reply = c.decide(d["situation"], npc=d.get("npc"), temperature=0.0, **kind)
                row["picks"][reply["value"]] += 1
                row["probs"].append(reply["probs"])
        trade = scene.get("trade")
        if trade:
            decisions.append({"choices": [a["name"] for a in trade["actions"]] + [NO_ACTION], **trade})
            acted = _trade(c, trade, scene["npcs"][trade["npc"]]["persona"], seeds)
            out.append({"npc": trade["npc"], "situation": trade["line"], "picks": Counter(),
                        "probs": [probs for probs, _ in acted], "arguments": _arguments(acted, trade)})
            out[-1]["picks"].update(max(p, key=p.get) for p in out[-1]["probs"])  # the pick at temperature 0
    for d, row in zip(decisions, out):
        wrong = d.get("not_sensible", [])
        row["picks"] = dict(row["picks"])
        row["mean_probs"] = {ch: round(sum(p[ch] for p in row["probs"]) / seeds, 3) for ch in d["choices"]}
        row["sensible_picks"] = sum(n for ch, n in row["picks"].items() if ch not in wrong)
        if wrong:
            worst = [sum(p[ch] for ch in wrong) for p in row["probs"]]
            row["not_sensible_prob"] = {"min": round(min(worst), 3), "max": round(max(worst), 3)}
        del row["probs"]
    return out


def _trade(c: Client, trade: dict, persona: str, seeds: int) -> list[tuple[dict[str, float], dict | None]]:
    """The trade's action probabilities (``NO_ACTION``: none) and the action taken, after each seed's line,
    as the demo asks them."""
    acted = []
    for seed in range(1, seeds + 1):
        c.npc(trade["npc"], persona, seed=seed, actions=trade["actions"])
        reply = c.say(trade["npc"], trade["line"], actions=True, max_tokens=48, stop=["\n"])
        acted.append((reply["action_probs"], reply["action"]))
    return acted


def _arguments(acted: list[tuple[dict[str, float], dict | None]], trade: dict) -> dict[str, dict]:
    """Per action taken: how often each argument map came with it, and how often the one the scenario
    expects (the trade's ``right_args``, when it names that action)."""
    out: dict[str, dict] = {}
    for _, action in acted:
        if action is None:
            continue
        row = out.setdefault(action["name"], {"given": Counter()})
        row["given"][json.dumps(action["args"], sort_keys=True)] += 1
    for name, row in out.items():
        row["given"] = dict(row["given"])
        right = trade.get("right_args", {}).get(name)
        if right is not None:
            row["right"] = row["given"].get(json.dumps(right, sort_keys=True), 0)
    return out


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="drawn histories per decision")
    ap.add_argument("--scenario", help="a scenario JSON file (default: the built-in village)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: give at least 1 drawn history")
    if args.json and not Path(args.json).resolve().parent.is_dir():  # found out before the run, not after it
        ap.error(f"--json {args.json}: its folder does not exist")
    try:
        rows = probe(load_scenario(args.scenario), args.seeds, extra)
    except (NpcaiError, KeyError) as exc:  # a scenario that cannot be read, or a decision by an NPC it does not define
        print(f"scenario_decisions: {exc if isinstance(exc, NpcaiError) else f'no NPC {exc} in the scenario'}",
              file=sys.stderr)
        return 2
    for row in rows:
        print(f"{row['npc']}: {row['situation']}\n  sensible picks {row['sensible_picks']} of {args.seeds}; "
              f"picks {row['picks']}\n  mean probs {row['mean_probs']}"
              + (f"\n  not sensible, per history: {row['not_sensible_prob']}" if "not_sensible_prob" in row else "")
              + "".join(f"\n  {name}'s arguments: {a['given']}" + (f", as expected {a['right']}" if "right" in a else "")
                        for name, a in row.get("arguments", {}).items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": args.seeds, "scenario": args.scenario or "village", "sidecar": extra,
                       "decisions": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
