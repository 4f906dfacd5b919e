"""Does an NPC stay in its role? (issue 13: Brom "refuses to fix the sword he is asked to fix")

Through the product: one sidecar, NPCs with the game set's personas ("You are Torvald, a hard-working
blacksmith of Stonebridge."), a seeded sample of them per role, each asked the things people ask that
role (a blacksmith: "Can you fix my sword?"), each ask to a fresh NPC with its own seed, at `say`'s
default sampling. For each line, by rule, so any run counts the same way:

- ``denies``: the NPC says it is not what its role is ("I'm not a blacksmith", "I am not a priest");
- ``program``: it talks as a program ("as an AI", "language model", "assistant");
- ``refuses``: the line opens by turning the ask down ("No", "I'm sorry", "I can't", "Unfortunately");
- ``role_word``: the line names the NPC's trade or something only that trade has (a blacksmith's
  "forge", "anvil"; none of these words is in the asks);
- ``ends_sentence``, as the quality bench counts it.

    python bench/role_keeping.py --per-role 3 --json /tmp/roles.json
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

#: What people ask each role of the game set, and words only that role's own talk would bring in.
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "town guard": (("I want to report a theft.", "Is the north road safe tonight?", "Can I pass through here?"),
                   ("guard", "watch", "patrol", "captain", "law")),
    "merchant": (("What are you selling today?", "How much does this cost?", "Can you give me a better price?"),
                 ("merchant", "wares", "stall", "shop", "goods", "coin", "gold", "silver")),
    "healer": (("I'm hurt. Can you help me?", "Do you have anything for a fever?", "My friend was bitten by a snake."),
               ("heal", "herb", "remedy", "potion", "salve", "bandage", "wound", "tea", "rest")),
    "blacksmith": (("Can you fix my sword?", "How much for a new shield?", "Can you make me an axe?"),
                   ("smith", "forge", "anvil", "hammer", "steel", "iron", "metal", "coin", "gold")),
    "innkeeper": (("Do you have a room for the night?", "What's for supper?", "Any news from travelers?"),
                  ("inn", "tavern", "ale", "stew", "bed", "guest", "coin", "gold")),
    "farmer": (("How are your crops this year?", "Can I buy some eggs?", "Do you need help with the harvest?"),
               ("farm", "field", "rain", "soil", "barn", "hens", "chickens", "wheat", "corn", "cows")),
    "goblin scout": (("Let me cross the bridge.", "What are you doing out here?", "Take me to your camp."),
                     ("goblin", "scout", "please", "don't hurt", "run", "hide", "boss")),
    "loyal companion": (("Are you ready to set out?", "Should we rest here tonight?", "Will you stay with me?"),
                        ("companion", "friend", "side", "together", "with you", "always")),
    "bandit chief": (("Let my friends go.", "What do you want from me?", "I could join your gang."),
                     ("bandit", "gold", "coin", "loot", "men", "boys", "ransom", "pay")),
    "soldier": (("Where is your captain?", "Are you ready for the battle?", "What are your orders?"),
                ("soldier", "sir", "duty", "command", "march", "army", "ranks")),
    "priest": (("Can you bless me?", "I need someone to talk to.", "Will you pray for my sick mother?"),
               ("god", "gods", "faith", "temple", "chapel", "light", "child", "lord")),
    "child": (("Where are your parents?", "What are you playing?", "Do you want a sweet?"),
              ("mum", "mom", "mommy", "dad", "daddy", "mama", "papa", "game", "toy", "fun")),
    "wizard": (("Can you teach me a spell?", "What is that glowing book?", "Can you lift this curse?"),
               ("magic", "arcane", "wizard", "enchant", "apprentice", "power", "potion")),
    "hunter": (("What are you tracking?", "Can you sell me some furs?", "Is there game in these woods?"),
               ("hunt", "deer", "elk", "boar", "tracks", "bow", "arrow", "trail", "prey")),
    "thief": (("Did you take my purse?", "Can you open this lock for me?", "What are you doing in that alley?"),
              ("thief", "steal", "stole", "pick", "coin", "guards", "shadows")),
    "sailor": (("When does the ship sail?", "Can I join the crew?", "How was the voyage?"),
               ("sea", "captain", "deck", "port", "tide", "wind", "waves", "harbor", "mate", "storm")),
}

#: The words that name each role, as "I'm not a ..." would deny it.
_ROLE_NOUNS = {"town guard": "guard", "goblin scout": "goblin|scout", "loyal companion": "companion",
               "bandit chief": "bandit|chief", "priest": "priest|priestess", "child": "child|boy|girl|kid"}
_PROGRAM = re.compile(r"\bAI\b|\b(?:language model|assistant|chatbot)\b", re.IGNORECASE)
_REFUSES = re.compile(r"^\W*(?:No\b|Nope\b|I'm sorry|I’m sorry|I am sorry|Sorry\b|I can't|I can’t|I cannot|"
                      r"I won't|I will not|Unfortunately|I'm afraid|I am afraid|I don't think)", re.IGNORECASE)


def personas(per_role: int) -> list[tuple[str, str]]:
    """(role, persona) for ``per_role`` distinct personas of each role of the game set, a seeded sample."""
    by_role: dict[str, list[str]] = {}
    for q in quality.game("test") + quality.game("example"):
        seen = by_role.setdefault(q.role, [])
        if q.persona and q.persona not in seen:
            seen.append(q.persona)
    rng = random.Random(7)
    return [(role, p) for role in ROLES for p in rng.sample(by_role[role], min(per_role, len(by_role[role])))]


def judge(role: str, text: str) -> dict:
    """The rule-based marks of one line."""
    words = ROLES[role][1]
    low = text.lower()
    nouns = _ROLE_NOUNS.get(role, role)
    denies = re.search(rf"\bI(?:'m| am|’m) not (?:\w+ ){{0,3}}(?:{nouns})\b", text, re.IGNORECASE)
    return {"denies": bool(denies), "program": bool(_PROGRAM.search(text)), "refuses": bool(_REFUSES.search(text)),
            "role_word": any(re.search(rf"\b{re.escape(w)}", low) for w in words),
            "ends_sentence": ends_sentence(text)}


def probe(cast: list[tuple[str, str]], threads: int, max_tokens: int, temperature: float | None) -> list[dict]:
    lines = []
    with Sidecar("--threads", str(threads)) as sc, Client(sc.endpoint) as c:
        for i, (role, persona) in enumerate(cast):
            for j, ask in enumerate(ROLES[role][0]):
                npc = f"ask{j}"  # defined afresh for each persona: no earlier answer to copy
                c.npc(npc, persona, seed=i * 10 + j)
                kw = {} if temperature is None else {"temperature": temperature}
                text = c.say(npc, ask, max_tokens=max_tokens, **kw)["text"]
                lines.append({"role": role, "persona": persona, "ask": ask, "text": text, **judge(role, text)})
    return lines


def summary(lines: list[dict]) -> dict:
    return {"lines": len(lines), **{k: sum(x[k] for x in lines) for k in ("denies", "program", "refuses", "role_word",
                                                                          "ends_sentence")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-role", type=int, default=3, help="personas of each of the game set's 16 roles")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, help="say's temperature (default: say's own)")
    p.add_argument("--json", help="also write every line here")
    args = p.parse_args()
    lines = probe(personas(args.per_role), args.threads, args.max_tokens, args.temperature)
    s = summary(lines)
    print(f"{s['lines']} lines: {s['denies']} deny their role, {s['program']} talk as a program, {s['refuses']} open with a refusal, "
          f"{s['role_word']} use a word of the role, {s['ends_sentence']} end a sentence")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": s, "lines": lines}, indent=1))


if __name__ == "__main__":
    main()
