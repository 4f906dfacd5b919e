"""How should a game ask a COPA-like question (a premise, its cause or its effect) of Gemma? Measured on COPA's
development split only; the test split stays held out for the benchmark's report.

Each framing is what a game could send as ``decide`` with ``choices``: a persona, the situation (the user turn)
and a ``lead`` that every option completes, scored summed or ``per_byte``. Items are rendered as ``decide``
renders a choice and scored through llama.cpp directly (``public_framings.Scorer``; its picks are checked against
a benchmark run's recorded sidecar picks with ``check``). The prior (each option's score after the content-free
situation) is taken off at decide's weight, 0.25, and at 0 and 0.5 for comparison. "as now" is how the
benchmark asked COPA before this measurement; "narrator, premise alone, …" is how it asks since (chosen on all
500 dev items, docs/QUALITY.md). Run:

    python bench/copa_framings.py score gemma3-270m /tmp/copa-gemma.json --items 250
    python bench/copa_framings.py table /tmp/copa-gemma.json
    python bench/copa_framings.py check /tmp/copa-gemma.json docs/bench-quality-qual3-gemma.json gemma3-270m
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from public_framings import Scorer  # beside this script

from npcai.bench import quality
from npcai.bench.anchor import Anchor
from npcai.model import catalog
from npcai.model.choices import CONTENT_FREE, PRIOR_WEIGHT
from npcai.sidecar.npc import ANONYMOUS_PERSONA

QUIZ = quality.QUIZ_PERSONA
NARRATOR = "You tell what happens in everyday stories, with common sense."

# name: (persona, user turn, lead). {p}: the premise; {q}: the premise and its question (the benchmark's
# situation until 2026-12-06, "as now"); {stem}: the premise without its final period; {lead}: the benchmark's lead ("It happened
# because" / "As a result,"). Causes are asked with the first of each pair, effects with the second.
FRAMINGS: dict[str, tuple[str, tuple[str, str], tuple[str, str]]] = {
    "as now (quiz, question, It happened because / As a result,)":
        (QUIZ, ("{q}", "{q}"), ("It happened because", "As a result,")),
    "quiz, question, This happened because / So":
        (QUIZ, ("{q}", "{q}"), ("This happened because", "So")),
    "quiz, question, lead repeats the premise":
        (QUIZ, ("{q}", "{q}"), ("{stem} because", "{stem}, so")),
    "quiz, premise alone, lead repeats the premise":
        (QUIZ, ("{p}", "{p}"), ("{stem} because", "{stem}, so")),
    "narrator, question, lead repeats the premise":
        (NARRATOR, ("{q}", "{q}"), ("{stem} because", "{stem}, so")),
    "anonymous, question, lead repeats the premise":
        (ANONYMOUS_PERSONA, ("{q}", "{q}"), ("{stem} because", "{stem}, so")),
    "quiz, Why? / What happened then?, Because / Then":
        (QUIZ, ("{p} Why?", "{p} What happened then?"), ("Because", "Then")),
    "narrator, premise alone, It happened because / As a result,":
        (NARRATOR, ("{p}", "{p}"), ("It happened because", "As a result,")),
}


def dev_items(folder: Path) -> list[quality.Question]:
    """COPA's development split (ids 1-500), as the benchmark loads it."""
    return [q for q in quality.usable(quality.copa(folder)) if int(q.id.split("-")[1]) <= 500]


def render(q: quality.Question, framing: tuple[str, tuple[str, str], tuple[str, str]]) -> tuple[str, str, str]:
    """(persona, user turn, lead) of one item under a framing."""
    persona, users, leads = framing
    cause = q.context.endswith(" because")
    premise = q.situation.split(" What ")[0]
    question = premise + (" What was the cause?" if cause else " What happened next?")
    fill = {"p": premise, "q": question, "stem": premise.rstrip(".!"), "lead": q.lead}
    pick = 0 if cause else 1
    return persona, users[pick].format(**fill), leads[pick].format(**fill)


def score(model: str, out: Path, n_items: int, data: Path, only: list[str] | None, exclude: Path | None) -> None:
    s = Scorer(model)
    anchor = Anchor(catalog.resolve(model), 2)
    done = {r["id"] for r in json.loads(exclude.read_text())["rows"]} if exclude else set()
    items = [q for q in dev_items(data / "quality") if q.id not in done]
    items = sorted(random.Random(7).sample(items, min(n_items, len(items))), key=items.index)
    framings = {k: v for k, v in FRAMINGS.items() if not only or any(o in k for o in only)}
    rows = []
    for i, q in enumerate(items):
        a = anchor.score(q.context, [" " + o for o in q.options])
        row = {"id": q.id, "label": q.label, "anchor": list(a.loglik), "framings": {}}
        for key, framing in framings.items():
            persona, user, lead = render(q, framing)
            row["framings"][key] = {"bytes": [len((" " + o).encode()) for o in q.options],
                                    "loglik": s.score(persona, user, lead, list(q.options)),
                                    "prior": s.score(persona, CONTENT_FREE, lead, list(q.options))}
        rows.append(row)
        if (i + 1) % 25 == 0:
            print(f"{i + 1} items scored", flush=True)
            out.write_text(json.dumps({"model": model, "rows": rows}))
    out.write_text(json.dumps({"model": model, "rows": rows}))
    anchor.close()


def picks(rows: list[dict], key: str, w: float, per_byte: bool) -> list[int]:
    out = []
    for r in rows:
        f = r["framings"][key]
        sc = np.array(f["loglik"]) - w * np.array(f["prior"])
        if per_byte:
            sc = sc / np.array(f["bytes"])
        out.append(int(np.argmax(sc)))
    return out


def table(paths: list[Path]) -> None:
    """Accuracy by framing over the items of all ``paths`` (the framings they all scored)."""
    bodies = [json.loads(p.read_text()) for p in paths]
    body = bodies[0]
    keys = set.intersection(*(set(b["rows"][0]["framings"]) for b in bodies))
    rows = [{**r, "framings": {k: v for k, v in r["framings"].items() if k in keys}} for b in bodies for r in b["rows"]]
    labels = [r["label"] for r in rows]
    acc = lambda p: 100 * float(np.mean([a == b for a, b in zip(p, labels)]))
    an = [np.array(r["anchor"]) for r in rows]
    nb = [np.array(r["framings"][next(iter(r["framings"]))]["bytes"]) for r in rows]  # " " + option, as lm-eval
    print(f"{body['model']}, COPA dev ({len(rows)} items): anchor acc {acc([int(np.argmax(a)) for a in an]):.1f}, "
          f"acc_norm {acc([int(np.argmax(a / b)) for a, b in zip(an, nb)]):.1f}")
    print(f"  {'framing':<66} {'w=0':>6} {'0.25':>6} {'0.5':>6} {'/byte w=0':>10} {'0.25':>6} {'0.5':>6}")
    for key in [k for k in FRAMINGS if k in keys]:
        cols = [acc(picks(rows, key, w, pb)) for pb in (False, True) for w in (0, PRIOR_WEIGHT, 0.5)]
        print(f"  {key:<66} " + " ".join(f"{c:6.1f}" for c in cols[:3]) + "     " +
              " ".join(f"{c:6.1f}" for c in cols[3:]))


def check(path: Path, report: Path, model: str) -> None:
    """How often the scorer's pick for the benchmark's own framing matches the sidecar's recorded pick."""
    rows = json.loads(path.read_text())["rows"]
    recorded = {r["id"]: int(np.argmax(r["probs"])) for r in
                json.loads(report.read_text())["models"][model]["raw"]["quality"]["copa"]["items"]}
    key = next(iter(FRAMINGS))
    mine = dict(zip([r["id"] for r in rows], picks(rows, key, PRIOR_WEIGHT, True)))
    both = [i for i in mine if i in recorded]
    print(f"{sum(mine[i] == recorded[i] for i in both)} of {len(both)} recorded picks reproduced")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("score")
    a.add_argument("model")
    a.add_argument("out", type=Path)
    a.add_argument("--items", type=int, default=250)
    a.add_argument("--data", default=None)
    a.add_argument("--only", action="append", help="framings whose name contains this (repeatable)")
    a.add_argument("--exclude", type=Path, help="a score file whose items are left out (to score the rest)")
    t = sub.add_parser("table")
    t.add_argument("path", type=Path, nargs="+")
    c = sub.add_parser("check")
    c.add_argument("path", type=Path)
    c.add_argument("report", type=Path)
    c.add_argument("model")
    args = p.parse_args()
    if args.cmd == "score":
        score(args.model, args.out, args.items, quality.data_dir(args.data), args.only, args.exclude)
    elif args.cmd == "table":
        table(args.path)
    else:
        check(args.path, args.report, args.model)


if __name__ == "__main__":
    main()
