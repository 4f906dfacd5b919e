"""How should a choice be asked? The framings measured before picking decide's default.

Each framing renders npcai's game decisions (test split) and scores every option's whole
continuation with llama.cpp directly (npcai.model.native): summed log-likelihood, per byte or per
token, with and without a part of the option's prior under a content-free situation taken off.
The results are in docs/QUALITY.md ("How a choice is asked"). Run:

    python bench/choice_framings.py smollm2-135m     # about 4 minutes on 2 cores; gemma3-270m about 5
"""

from __future__ import annotations

import sys

import numpy as np
from forked_options import ForkedScorer  # beside this script

from npcai.bench import quality
from npcai.model import catalog

CONTENT_FREE = "Nothing happens."
QUESTION = " What should you do?"
SENSIBLE = "The sensible thing to do is to"


class Scorer(ForkedScorer):
    """Options scored after a text: each option's tokens as they follow the text and a space."""

    def score(self, text: str, options: list[str]) -> list[float]:
        ctx = self.m.tokenize(text, add_bos=True, special=True)
        return self.score_tokens(ctx, [self.m.tokenize(text + " " + o, add_bos=True, special=True)[len(ctx):]
                                       for o in options])


def framings(s: Scorer, q: quality.Question, shots: list[quality.Question]) -> dict[str, list[float]]:
    chat = lambda user, lead, turns=(): s.m.apply_chat_template([("system", q.persona), *turns, ("user", user)],
                                                                 True) + lead
    shot_turns = [t for e in shots for t in (("user", e.situation + QUESTION),
                                             ("assistant", f"{SENSIBLE} {e.options[e.label]}."))]
    o = list(q.options)
    return {
        "raw narrative (the anchor's text)": s.score(f"{q.persona} {q.situation} I decide to", o),
        "raw narrative, prior": s.score(f"{q.persona} {CONTENT_FREE} I decide to", o),
        "chat, bare option after the answer turn": s.score(chat(q.situation, ""), o),
        "chat, 'I decide to'": s.score(chat(q.situation, "I decide to"), o),
        "chat, 'I decide to', prior": s.score(chat(CONTENT_FREE, "I decide to"), o),
        "chat, options listed": s.score(chat(q.situation + "\nYour options: " + "; ".join(o) + ".", "I decide to"), o),
        "chat, question + sensible lead": s.score(chat(q.situation + QUESTION, SENSIBLE), o),
        "chat, question + sensible lead, prior": s.score(chat(CONTENT_FREE + QUESTION, SENSIBLE), o),
        "+ 2 worked examples": s.score(chat(q.situation + QUESTION, SENSIBLE, shot_turns), o),
        "+ 2 worked examples, prior": s.score(chat(CONTENT_FREE + QUESTION, SENSIBLE, shot_turns), o),
    }


def main(name: str) -> None:
    s = Scorer(name)
    items, examples = quality.game("test"), quality.game("example")
    runs = [(q, framings(s, q, [e for e in examples if e.role == q.role][:2])) for q in items]
    print(f"{name}: {len(items)} game decisions; accuracy in %")
    print(f"  {'framing':<44} {'sum':>6} {'/byte':>6} {'/token':>7} {'sum, prior x0.25':>17} {'x0.5':>6}")
    for key in runs[0][1]:
        if key.endswith(", prior"):
            continue
        prior = f"{key}, prior" if f"{key}, prior" in runs[0][1] else None

        def acc(score) -> float:
            return 100 * float(np.mean([int(np.argmax(score(q, r))) == q.label for q, r in runs]))

        cols = [acc(lambda q, r: np.array(r[key])),
                acc(lambda q, r: np.array(r[key]) / np.array([len(o.encode()) for o in q.options])),
                acc(lambda q, r: np.array(r[key]) / np.array([len(s.m.tokenize(" " + o)) for o in q.options]))]
        if prior:
            cols += [acc(lambda q, r, a=a: np.array(r[key]) - a * np.array(r[prior])) for a in (0.25, 0.5)]
        print(f"  {key:<44} " + " ".join(f"{c:6.1f}" for c in cols))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else catalog.DEFAULT_MODEL)
