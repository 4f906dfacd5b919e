"""The anchor's acc_norm re-derived on the items a quality report scored, per character as lm-evaluation-harness
computes it, beside the per-byte-of-" "+option figure that reports before session 14 recorded.

Reports keep each item's anchor picks, not its log-likelihoods, so the anchor (``npcai/bench/anchor.py``, the same
GGUF through llama-cpp-python's ``Llama``) scores the items again: each option's summed log-likelihood after the
context, then both normalisations from the same numbers. The old picks are checked against the report's
``anchor_pick_norm``, item by item, and ``decide``'s accuracy on the same items is read from the report. Each set is
shown whole (as the report scored it) and on its held-out part (COPA's test split, ids over 500; the odd-indexed
half of PIQA and ARC-Easy; the game set is all held out). Run (docs/QUALITY.md, session 14, has every command):

    python bench/anchor_acc_norm.py docs/bench-quality-session10-gemma-whole.json --model gemma3-270m \
        --sets game,copa,piqa --held-out-only --out /tmp/anchor-gemma.json    # about 10 minutes on 2 cores
    python bench/anchor_acc_norm.py table /tmp/anchor-gemma.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from npcai.bench import quality
from npcai.bench.anchor import Anchor
from npcai.model import catalog


def _held_out(name: str, item_id: str) -> bool:
    n = int(item_id.split("-")[1])
    return {"copa": n > 500, "piqa": n % 2 == 1, "arc_easy": n % 2 == 1}.get(name, True)


def _questions(name: str, data: Path) -> dict[str, quality.Question]:
    if name == "game":
        return {q.id: q for q in quality.game()}
    load, _ = quality.PUBLIC_SETS[name]
    return {q.id: q for q in quality.usable(load(data / "quality"))}


def score(report: Path, model: str, sets: list[str], data: Path, held_out_only: bool, out: Path) -> None:
    raw = json.loads(report.read_text())["models"][model]["raw"]["quality"]
    anchor = Anchor(catalog.resolve(model), int(os.environ.get("THREADS", "2")))
    result: dict = {"report": str(report), "model": model, "sets": {}}
    try:
        for name in sets:
            questions = _questions(name, data)
            rows = []
            t = time.perf_counter()
            for r in raw[name]["items"]:
                if held_out_only and not _held_out(name, r["id"]):
                    continue
                q = questions[r["id"]]
                s = anchor.score(q.context, q.continuations)
                rows.append({"id": q.id, "label": q.label, "loglik": list(s.loglik), "nchars": list(s.nchars),
                             "nbytes_with_space": [len((" " + o).encode()) for o in q.continuations],
                             "report_pick_norm": r["anchor_pick_norm"], "report_pick": r["anchor_pick"],
                             "decide_right": int(np.argmax(r["probs"])) == r["label"]})
            result["sets"][name] = rows
            print(f"{model} {name}: {len(rows)} items in {time.perf_counter() - t:.0f} s", flush=True)
    finally:
        anchor.close()
    out.write_text(json.dumps(result))
    table(out)


def table(path: Path) -> None:
    result = json.loads(path.read_text())
    print(f"{result['model']} ({result['report']})")
    for name, rows in result["sets"].items():
        held = [r for r in rows if _held_out(name, r["id"])]
        for part, rs in (("all", rows), ("held out", held if len(held) < len(rows) else [])):
            if not rs:
                continue
            ll = [np.array(r["loglik"]) for r in rs]
            old = [int(np.argmax(a / np.array(r["nbytes_with_space"]))) for a, r in zip(ll, rs)]
            new = [int(np.argmax(a / np.array(r["nchars"]))) for a, r in zip(ll, rs)]
            acc = [int(np.argmax(a)) for a in ll]
            labels = [r["label"] for r in rs]

            def pct(picks: list[int], labels: list[int] = labels) -> float:
                return 100 * float(np.mean([p == y for p, y in zip(picks, labels)]))

            same = sum(p == r["report_pick_norm"] for p, r in zip(old, rs))
            same_acc = sum(p == r["report_pick"] for p, r in zip(acc, rs))
            decide = 100 * float(np.mean([r["decide_right"] for r in rs]))
            print(f"  {name:<9} {part:<8} n={len(rs):<5} acc {pct(acc):5.1f}  acc_norm old {pct(old):5.1f} "
                  f"new {pct(new):5.1f}  decide {decide:5.1f}  (new - old picks differ on "
                  f"{sum(a != b for a, b in zip(old, new))}; report's picks reproduced: acc {same_acc}/{len(rs)}, "
                  f"acc_norm {same}/{len(rs)})")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        table(Path(sys.argv[2]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("report", type=Path)
    p.add_argument("--model", required=True, help="the report's model entry (a catalog name)")
    p.add_argument("--sets", default="game,copa,piqa,arc_easy")
    p.add_argument("--data", default=None, help="the public data folder (default: as npcai bench finds it)")
    p.add_argument("--held-out-only", action="store_true", help="score only each set's held-out part")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    score(args.report, args.model, args.sets.split(","), quality.data_dir(args.data), args.held_out_only, args.out)


if __name__ == "__main__":
    main()
