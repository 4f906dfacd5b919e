"""Does an NPC introduce itself by its persona's name? (issue 13: "Brom calls himself Grimbold Ironfist")

Through the product: one sidecar, NPCs with the game set's named personas ("You are Hilda, a stern
town guard of Oakvale."), a seeded sample of them, each asked who it is three ways, at `say`'s default
sampling. For each line: whether it names the NPC, and whether it introduces the NPC ("I am",
"I'm", "my name is", "call me" followed by a capitalised word) by the persona's name or by another.
Also the share of lines that end at a sentence end, as the quality bench counts it.

    python bench/name_keeping.py --personas 40 --json /tmp/names.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from npcai import Client, Sidecar
from npcai.bench import quality
from npcai.model.lines import ends_sentence
from npcai.sidecar.npc import persona_name

QUESTIONS = ("What is your name?", "Who are you?", "Introduce yourself, stranger.")
_INTRO = re.compile(r"\b(?i:I am|I'm|I’m|my name is|my name's|name's|call me|known as) ?([A-Z][\w'-]*)")


def named_personas(n: int) -> list[tuple[str, str]]:
    """(name, persona) of ``n`` distinct named personas of the game set, a seeded sample."""
    found: dict[str, str] = {}
    for q in quality.game("test") + quality.game("example"):
        name = persona_name(q.persona or "")
        if name and name not in found:
            found[name] = q.persona
    names = sorted(found)
    return [(name, found[name]) for name in random.Random(7).sample(names, min(n, len(names)))]


def probe(personas: list[tuple[str, str]], threads: int, max_tokens: int) -> list[dict]:
    lines = []
    with Sidecar("--threads", str(threads)) as sc, Client(sc.endpoint) as c:
        for i, (name, persona) in enumerate(personas):
            for j, question in enumerate(QUESTIONS):
                npc = f"npc{i}-{j}"  # each question to a fresh NPC: no earlier answer to copy
                c.npc(npc, persona, seed=i * 10 + j)
                text = c.say(npc, question, max_tokens=max_tokens)["text"]
                intro = [m.group(1) for m in _INTRO.finditer(text) if m.group(1) not in ("A", "An", "The")]
                first = name.split()[0]
                lines.append({"name": name, "question": question, "text": text,
                              "names_itself": name in text or first in text,
                              "introductions": len(intro),
                              "by_its_name": sum(w == first or name.startswith(w) for w in intro),
                              "ends_sentence": ends_sentence(text)})
    return lines


def summary(lines: list[dict]) -> dict:
    intros = sum(x["introductions"] for x in lines)
    return {"lines": len(lines), "names_itself": sum(x["names_itself"] for x in lines),
            "introductions": intros, "by_its_name": sum(x["by_its_name"] for x in lines),
            "ends_sentence": sum(x["ends_sentence"] for x in lines)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--personas", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--json", help="also write every line here")
    args = p.parse_args()
    lines = probe(named_personas(args.personas), args.threads, args.max_tokens)
    s = summary(lines)
    print(f"{s['lines']} lines: {s['names_itself']} name the NPC; {s['introductions']} introductions, "
          f"{s['by_its_name']} by the persona's name; {s['ends_sentence']} end a sentence")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": s, "lines": lines}, indent=1))


if __name__ == "__main__":
    main()
