"""The answer inside the user's turn, on every set: the options complete "... What should you do? I should" (or a
set's own lead) with no end of turn and no assistant opener, 6 tokens fewer for SmolLM2 and 5 for Gemma per decision,
against decide's default, on the game set's test split and the public sets' development halves (COPA dev, 300 of
PIQA's and ARC-Easy's even halves), scored as decide scores: whole options on the scoring weights, a quarter of the
prior taken off, per byte where the bench asks so. bench/open_turn_framings.py measured the game set alone; the
results are in docs/QUALITY.md ("Session 16: the answer in the user's turn, on every set").

    python bench/open_turn_sets.py smollm2-135m ../shared/data     # about 7 minutes on 2 cores; gemma3-270m about 12
"""

from __future__ import annotations

import sys
import time

import numpy as np
from train_decision_lora import Scorer, _stem  # beside this script

from npcai.bench import quality
from npcai.model import catalog, choices
from npcai.model.native import Model
from npcai.sidecar.npc import ANONYMOUS_PERSONA, DEFAULT_LEAD, Npc, as_question

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
folder = quality.data_dir(sys.argv[2] if len(sys.argv) > 2 else None) / "quality"
m = Model(catalog.scoring_weights(name) or catalog.resolve(name))
s = Scorer(m, None, 2)


def even(items: list[quality.Question]) -> list[quality.Question]:
    return [q for q in items if int(q.id.split("-")[1]) % 2 == 0]


sets = {"game": quality.game("test"),
        "copa_dev": quality.usable(quality.copa(folder))[:500],
        "piqa_even": quality.sample(even(quality.usable(quality.piqa(folder))), 300),
        "arc_even": quality.sample(even(quality.usable(quality.arc_easy(folder))), 300)}


def stem(q: quality.Question, situation: str, open_turn: bool) -> list[int]:
    """decide's prompt (the NPC's persona and identity exchange, the situation, the lead), or the same with the lead
    inside the user's turn: the chat rendered without the answer turn, its last end of turn cut."""
    persona = q.persona if q.persona is not None else ANONYMOUS_PERSONA
    lead = q.lead or DEFAULT_LEAD
    if not open_turn:
        return _stem(m, persona, situation, lead)
    user = as_question(situation) if lead == DEFAULT_LEAD else situation
    text = m.apply_chat_template(Npc("", persona).persona_chat(("user", f"{user} {lead}")), False)
    end = next((e for e in ("<|im_end|>", "<end_of_turn>") if e in text), None)
    if end is None:
        raise SystemExit(f"{name}: no end of turn this script knows in its chat template")
    return m.tokenize(text[:text.rstrip().rfind(end)].rstrip(), add_bos=True, special=True)


for set_name, items in sets.items():
    picks = {}
    for open_turn in (False, True):
        start_s, right, tokens = time.time(), [], []
        for q in items:
            options = [m.tokenize(" " + o, add_bos=False, special=False) for o in q.options]
            prompt = stem(q, q.situation, open_turn)
            tokens.append(len(prompt))
            prior = s.score(stem(q, choices.CONTENT_FREE, open_turn), options)
            score = s.score(prompt, options) - choices.PRIOR_WEIGHT * prior
            if q.per_byte:
                score = score / np.array([len(o.encode()) for o in q.options], float)
            right.append(int(np.argmax(score)) == q.label)
        picks[open_turn] = right
        print(f"{name} {set_name}/{'open' if open_turn else 'default':8s} {100 * np.mean(right):5.1f} % of {len(items)}  "
              f"prompt {np.mean(tokens):.1f} tokens  ({time.time() - start_s:.0f} s)", flush=True)
    gained = sum(b and not a for a, b in zip(picks[False], picks[True]))
    lost = sum(a and not b for a, b in zip(picks[False], picks[True]))
    print(f"   paired: the open turn gets {gained} right that the default missed, and misses {lost} it got", flush=True)
