"""Where does `decide` lose to its anchor on the public sets? Framings and scoring rules, measured.

Each public item is rendered as `decide` renders a choice (the model's chat template: a persona as
system, the situation as the user turn, the answer's lead, each option tokenized alone after a
space) and scored through llama.cpp directly (npcai.model.native): each option's summed
log-likelihood after the prompt and after the content-free prompt ("Nothing happens."), its prior.
The raw scores go to a JSON file; ``table`` then compares, per set and framing, summed against
per-byte scores and prior weights 0, 0.25 and 0.5, beside the anchor's figures on the same items.

Tuning happens on development items only: COPA's dev split, and the even-indexed half of PIQA's
validation and of ARC-Easy's test file (the odd half is held out). Run:

    python bench/public_framings.py score smollm2-135m /tmp/smollm2.json --items 150
    python bench/public_framings.py table /tmp/smollm2.json
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from forked_options import ForkedScorer  # beside this script

from npcai.bench import quality
from npcai.bench.anchor import Anchor
from npcai.model import catalog
from npcai.model.choices import CONTENT_FREE
from npcai.sidecar.npc import ANONYMOUS_PERSONA

NEUTRAL = quality.QUIZ_PERSONA

# (persona, user turn, lead) per set: each framing a game could send. "as now" is how the benchmark
# asked before this measurement (the anonymous persona, COPA "It happened because" / "As a result,",
# PIQA "Here is how:", ARC-Easy "The answer is").
FRAMINGS: dict[str, dict[str, tuple[str, str, str]]] = {
    "copa": {
        "as now": (ANONYMOUS_PERSONA, "{q}", "{lead}"),
        "neutral persona": (NEUTRAL, "{q}", "{lead}"),
        "cause was that / so": (ANONYMOUS_PERSONA, "{q}", "{alt}"),
    },
    "piqa": {
        "as now": (ANONYMOUS_PERSONA, "{q}", "{lead}"),
        "neutral persona": (NEUTRAL, "{q}", "{lead}"),
    },
    "arc_easy": {
        "as now": (ANONYMOUS_PERSONA, "{q}", "The answer is"),
        "neutral persona": (NEUTRAL, "{q}", "The answer is"),
        "lead 'Answer:'": (ANONYMOUS_PERSONA, "{q}", "Answer:"),
    },
}
_COPA_ALT = {"It happened because": "The cause was that", "As a result,": "So"}


def dev_items(name: str, folder: Path) -> list[quality.Question]:
    """The tuning items: COPA's dev split; the even-indexed half of PIQA and ARC-Easy."""
    items = quality.usable(quality.PUBLIC_SETS[name][0](folder))
    if name == "copa":
        return [q for q in items if int(q.id.split("-")[1]) <= 500]
    return [q for i, q in enumerate(quality.PUBLIC_SETS[name][0](folder)) if i % 2 == 0 and q in items]


class Scorer(ForkedScorer):
    """Options scored as decide scores them: the chat with its lead, each option after it."""

    def __init__(self, name: str, n_seq: int = 8):
        super().__init__(name, n_seq, cells_per_seq=512)

    def score(self, persona: str, user: str, lead: str, options: list[str]) -> list[float]:
        m = self.m
        text = m.apply_chat_template([("system", persona), ("user", user)], True) + lead
        sep = " " if lead else ""
        return self.score_tokens(m.tokenize(text, add_bos=True, special=True),
                                 [m.tokenize(sep + o.strip(), add_bos=False, special=False) for o in options])


def score(model: str, out: Path, n_items: int, data: Path) -> None:
    folder = data / "quality"
    s = Scorer(model)
    anchor = Anchor(catalog.resolve(model), 2)
    result: dict[str, list[dict]] = {}
    for name, framings in FRAMINGS.items():
        items = dev_items(name, folder)
        items = sorted(random.Random(7).sample(items, min(n_items, len(items))), key=items.index)
        rows = []
        for q in items:
            a = anchor.score(q.context, list(q.options))
            row = {"id": q.id, "label": q.label, "bytes": [len(o.encode()) for o in q.options],
                   "anchor": list(a.loglik), "framings": {}}
            for key, (persona, user, lead) in framings.items():
                lead = lead.format(lead=q.lead, alt=_COPA_ALT.get(q.lead, q.lead))
                user = user.format(q=q.situation)
                row["framings"][key] = {"loglik": s.score(persona, user, lead, list(q.options)),
                                        "prior": s.score(persona, CONTENT_FREE, lead, list(q.options))}
            rows.append(row)
        result[name] = rows
        print(f"{name}: {len(rows)} items scored", flush=True)
        out.write_text(json.dumps(result))
    anchor.close()


def table(path: Path) -> None:
    result = json.loads(path.read_text())
    for name, rows in result.items():
        labels = np.array([r["label"] for r in rows])

        def acc(scores: list[np.ndarray]) -> float:
            return 100 * float(np.mean([int(np.argmax(s)) == y for s, y in zip(scores, labels)]))

        nb = [np.array(r["bytes"], float) for r in rows]
        an = [np.array(r["anchor"]) for r in rows]
        print(f"{name} ({len(rows)} dev items): anchor acc {acc(an):.1f}, acc_norm {acc([a / b for a, b in zip(an, nb)]):.1f}")
        print(f"  {'framing':<22} {'w=0':>6} {'0.25':>6} {'0.5':>6} {'/byte w=0':>10} {'0.25':>6} {'0.5':>6}")
        for key in rows[0]["framings"]:
            ll = [np.array(r["framings"][key]["loglik"]) for r in rows]
            pr = [np.array(r["framings"][key]["prior"]) for r in rows]
            cols = [acc([l - w * p for l, p in zip(ll, pr)]) for w in (0, 0.25, 0.5)]
            cols += [acc([(l - w * p) / b for l, p, b in zip(ll, pr, nb)]) for w in (0, 0.25, 0.5)]
            print(f"  {key:<22} " + " ".join(f"{c:6.1f}" for c in cols[:3]) + "     " +
                  " ".join(f"{c:6.1f}" for c in cols[3:]))


def score_and_table(score: Callable[[str, Path, int, Path], None], table: Callable[[Path], None],
                    items: int = 150) -> None:
    """The command line of a framing study: ``score MODEL OUT [--items N] [--data DIR]``, ``table OUT``."""
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("score")
    a.add_argument("model")
    a.add_argument("out", type=Path)
    a.add_argument("--items", type=int, default=items)
    a.add_argument("--data", default=None)
    t = sub.add_parser("table")
    t.add_argument("path", type=Path)
    args = p.parse_args()
    if args.cmd == "score":
        score(args.model, args.out, args.items, quality.data_dir(args.data))
    else:
        table(args.path)


def main() -> None:
    score_and_table(score, table)


if __name__ == "__main__":
    main()
