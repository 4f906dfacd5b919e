"""Shorter choice prompts for issue 13's latency budget: the answer inside the user's turn (no end of turn and
assistant opener: 6 tokens fewer per decision), and shorter questions. Whole options scored with llama.cpp directly
on the game set's test split, as bench/choice_framings.py does; docs/QUALITY.md, "Answering in the user's turn".

    python bench/open_turn_framings.py smollm2-135m     # about 3 minutes on 2 cores
"""

from __future__ import annotations

import sys

import numpy as np
from choice_framings import CONTENT_FREE, Scorer  # beside this script

from npcai.bench import quality

s = Scorer(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")
items = quality.game("test")

def render(q, situation, question, lead, open_turn):
    turns = [("system", q.persona)]
    user = situation + question
    if open_turn:
        text = s.m.apply_chat_template(turns + [("user", user + " " + lead)], False)
        for end in ("<|im_end|>", "<end_of_turn>"):
            if end in text:
                return text[:text.rstrip().rfind(end)].rstrip()
    return s.m.apply_chat_template(turns + [("user", user)], True) + lead

VARIANTS = {"default": (" What should you do?", "I should", False),
            "open, question": (" What should you do?", "I should", True),
            "open, no question": ("", "I should", True),
            "open, 'What now?'": (" What now?", "I should", True),
            "open, 'So'": ("", "So I should", True),
            "default, 'What now?'": (" What now?", "I should", False)}
rows = []
for q in items:
    o = list(q.options)
    r = {}
    for label, (qu, lead, op) in VARIANTS.items():
        r[label] = np.array(s.score(render(q, q.situation, qu, lead, op), o))
        r[label + " prior"] = np.array(s.score(render(q, CONTENT_FREE, qu, lead, op), o))
    rows.append((q, r))
q0 = items[0]
base = len(s.m.tokenize(render(q0, q0.situation, " What should you do?", "I should", False), add_bos=True, special=True))
for label, (qu, lead, op) in VARIANTS.items():
    n = len(s.m.tokenize(render(q0, q0.situation, qu, lead, op), add_bos=True, special=True))
    accs = [100 * np.mean([int(np.argmax(r[label] - a * r[label + " prior"])) == q.label for q, r in rows])
            for a in (0, 0.25, 0.5)]
    print(f"{label:<22} tokens {n - base:+d}: " + "  ".join(f"x{a}: {v:.1f}" for a, v in zip((0, 0.25, 0.5), accs)))
