"""Does a base model decide better when its choice is rendered as plain text rather than through its chat
template? (issue 13: Gemma 3 270M is a base model, and its lm-evaluation-harness anchor scores raw text.)

On development items only (COPA's dev split, the even-indexed halves of PIQA and ARC-Easy, the game set's
worked examples), each item is scored twice through llama.cpp directly, as ``decide`` scores a choice
(``public_framings.Scorer``): once as ``decide`` renders it (persona as the system turn, the situation as the
user turn, then the lead) and once as plain text ("<persona>\\n\\n<situation>\\n<lead>"), each with its
content-free prior. The table gives accuracy at prior weights 0, 0.25 (``decide``'s) and 0.5, summed and per
byte, beside the anchor. Run:

    python bench/plain_framing.py score gemma3-270m /tmp/plain-gemma.json --items 150
    python bench/plain_framing.py table /tmp/plain-gemma.json
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from public_framings import Scorer, score_and_table  # beside this script

from npcai.bench import quality
from npcai.bench.anchor import Anchor
from npcai.model import catalog
from npcai.model.choices import CONTENT_FREE, PRIOR_WEIGHT
from npcai.sidecar.npc import ANONYMOUS_PERSONA, DEFAULT_LEAD, as_question


class PlainScorer(Scorer):
    """Options scored after the same words without the chat template's turns."""

    def plain(self, persona: str, user: str, lead: str, options: list[str]) -> list[float]:
        m = self.m
        text = f"{persona}\n\n{user}\n{lead}"
        sep = " " if lead else ""
        return self.score_tokens(m.tokenize(text, add_bos=True, special=True),
                                 [m.tokenize(sep + o.strip(), add_bos=False, special=False) for o in options])


def dev_sets(folder: Path) -> dict[str, list[quality.Question]]:
    return {"copa": [q for q in quality.usable(quality.copa(folder)) if int(q.id.split("-")[1]) <= 500],
            "piqa": quality.usable(quality.piqa(folder))[0::2],
            "arc_easy": quality.usable(quality.arc_easy(folder))[0::2],
            "game_dev": quality.game("example")}


def score(model: str, out: Path, n_items: int, data: Path) -> None:
    s = PlainScorer(model)
    anchor = Anchor(catalog.resolve(model), 2)
    result: dict[str, list[dict]] = {}
    for name, items in dev_sets(data / "quality").items():
        items = sorted(random.Random(11).sample(items, min(n_items, len(items))), key=items.index)
        rows = []
        for q in items:
            persona, lead = q.persona or ANONYMOUS_PERSONA, q.lead or DEFAULT_LEAD
            user = as_question(q.situation) if name == "game_dev" else q.situation
            options = list(q.options)
            rows.append({"id": q.id, "label": q.label, "bytes": [len((" " + o).encode()) for o in options],
                         "anchor": list(anchor.score(q.context, [" " + o for o in options]).loglik),
                         "chat": s.score(persona, user, lead, options),
                         "chat_prior": s.score(persona, CONTENT_FREE, lead, options),
                         "plain": s.plain(persona, user, lead, options),
                         "plain_prior": s.plain(persona, CONTENT_FREE, lead, options)})
        result[name] = rows
        print(f"{name}: {len(rows)} items scored", flush=True)
        out.write_text(json.dumps({"model": model, "sets": result}))
    anchor.close()


def table(path: Path) -> None:
    body = json.loads(path.read_text())
    for name, rows in body["sets"].items():
        labels = [r["label"] for r in rows]
        nb = [np.array(r["bytes"], float) for r in rows]

        def acc(scores: list[np.ndarray]) -> float:
            return 100 * float(np.mean([int(np.argmax(s)) == y for s, y in zip(scores, labels)]))

        an = [np.array(r["anchor"]) for r in rows]
        print(f"{body['model']}, {name} ({len(rows)} dev items): anchor acc {acc(an):.1f}, "
              f"acc_norm {acc([a / b for a, b in zip(an, nb)]):.1f}")
        for key in ("chat", "plain"):
            cells = []
            for w in (0.0, PRIOR_WEIGHT, 0.5):
                sc = [np.array(r[key]) - w * np.array(r[key + "_prior"]) for r in rows]
                cells.append(f"w={w}: {acc(sc):5.1f} summed, {acc([s / b for s, b in zip(sc, nb)]):5.1f} per byte")
            print(f"  {key:<6}" + "; ".join(cells))


def main() -> None:
    score_and_table(score, table)


if __name__ == "__main__":
    main()
