"""Are an action's arguments right when its action is? The choice of ``action_options.ARGS_PRIOR_WEIGHT``.

An action decision scores each combination of an action's arguments as an option of its own ("sell the
item: shield"), and the arguments come from comparing that action's combinations with each other. Here
the right action is imposed (``actions: [right]``), so only its arguments are decided, on every item with
arguments of two sets: ``dev``, bench/action_words.py's situations and bench/action_lines.py's dev lines
(the healer, the stable master and the ferryman: choices are made on it), and ``held``, the situations of
`npcai bench --only actions` and bench/action_lines.py's held lines (the smith, the innkeeper and the guard:
reported, never tuned on). A situation is decided once; a line is said to the NPC defined afresh with each
of ``--seeds`` seeds, then the arguments are decided after it, as ``say`` with ``actions`` asks them.
``--weights`` serves one sidecar per weight, with ``ARGS_PRIOR_WEIGHT`` set to it. Printed per weight and
set: right arguments of the situations, of the lines, of both.

    python bench/action_args.py smollm2-135m --weights 0.25,0.5,0.75,1.0,1.5
    python bench/action_args.py gemma3-270m

Arguments after ``--`` go to the sidecar (`npcai serve`'s flags).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import action_lines
import action_words

from npcai import Client, Sidecar
from npcai.bench import actions as bench_actions
from npcai.sidecar import action_options
from npcai.sidecar.actions import AFTER_LINE

#: name -> (NPCs, situations, lines); items are (npc, text, right action or None, its arguments).
SETS: dict[str, tuple[dict, list, list]] = {
    "dev": (action_words.NPCS, action_words.DEV, action_lines.DEV),
    "held": (bench_actions.NPCS, bench_actions.SITUATIONS, action_lines.HELD),
}


def serve(weight: str, args: list[str]) -> int:
    """``npcai serve`` with ``ARGS_PRIOR_WEIGHT`` set to ``weight``."""
    action_options.ARGS_PRIOR_WEIGHT = float(weight)
    from npcai.cli import main
    return main(["serve", *args])


def probe(model: str, weight: str | None, seeds: int, threads: int, sidecar_args: list[str]) -> list[dict[str, Any]]:
    """Every item's arguments, the right action imposed: one row a decision."""
    program = [sys.executable, __file__, "--serve", weight] if weight is not None else None
    rows = []
    with (Sidecar("--model", model, "--threads", str(threads), *sidecar_args, program=program) as sc,
          Client(sc.endpoint) as c):
        for name, (npcs, situations, lines) in SETS.items():
            for npc, situation, right, args in situations:
                if args:
                    persona, actions = npcs[npc]
                    c.npc(npc, persona, actions=actions, seed=1)
                    got = c.decide(situation, npc=npc, actions=[right])["value"]["args"]
                    rows.append({"set": name, "kind": "situation", "text": situation, "right": args, "got": got})
            for npc, line, right, args in lines:
                if not args:
                    continue
                persona, actions = npcs[npc]
                for seed in range(1, seeds + 1):
                    c.npc(npc, persona, actions=actions, seed=seed)
                    said = c.say(npc, line, max_tokens=48, stop=["\n"])["text"]
                    got = c.decide(AFTER_LINE, npc=npc, actions=[right])["value"]["args"]
                    rows.append({"set": name, "kind": "line", "text": line, "seed": seed, "said": said,
                                 "right": args, "got": got})
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name in SETS:
        mine = [r for r in rows if r["set"] == name]
        counts = {kind: (sum(r["got"] == r["right"] for r in mine if r["kind"] == kind),
                         sum(r["kind"] == kind for r in mine)) for kind in ("situation", "line")}
        both = (sum(n for n, _ in counts.values()), sum(t for _, t in counts.values()))
        out[name] = {**{f"{k}s": f"{n}/{t}" for k, (n, t) in counts.items()}, "all": f"{both[0]}/{both[1]}"}
    return out


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "--serve":
        sys.exit(serve(argv[1], argv[2:]))
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default="smollm2-135m")
    p.add_argument("--weights", help="ARGS_PRIOR_WEIGHT values to serve in turn (default: as shipped)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write every answer here")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    runs = {}
    for weight in args.weights.split(",") if args.weights else [None]:
        rows = probe(args.model, weight, args.seeds, args.threads, extra)
        label = weight or str(action_options.ARGS_PRIOR_WEIGHT)
        runs[label] = {"summary": summary(rows), "rows": rows}
        print(args.model, f"ARGS_PRIOR_WEIGHT={label}", json.dumps(runs[label]["summary"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "seeds": args.seeds, "sidecar_args": extra,
                                               "command": " ".join(sys.argv), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
