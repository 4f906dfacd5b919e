"""`bench --only decision`: decisions (choices, JSON) against llama-cpp-python with a GBNF grammar, and the
model's own forward passes."""

from __future__ import annotations

import time

from npcai.bench.harness import Bench
from npcai.bench.report import pct
from npcai.bench.workload import (
    CHOICES,
    GBNF,
    LINES,
    SCHEMA,
    SITUATIONS,
)
from npcai.client import Client
from npcai.model.scoring import option_cells


def run(b: Bench, c: Client) -> None:
    c.npc("grik", b.persona)
    for kind, fields in (("choice", {"choices": CHOICES}), ("json", {"schema": SCHEMA})):
        lat, replies = [], []
        c.decide(SITUATIONS[-1], npc="grik", **fields)  # compile and warm up
        for i in range(b.reps):
            t = time.perf_counter()
            replies.append(c.decide(SITUATIONS[i % len(SITUATIONS)], npc="grik", **fields))
            lat.append((time.perf_counter() - t) * 1000)
        gbnf = _gbnf_decisions(b, kind)
        rows = _choice_rows(b) if kind == "choice" else 1
        model_only = [_replay(b, r["usage"], rows, scorer=kind == "choice") for r in replies[: max(4, b.reps // 3)]]
        r = b.report
        r.add("decision", f"{kind} p50", pct(lat, 50), pct(gbnf, 50), "llama-cpp-python grammar=GBNF",
              target=">= 3x faster (SmolLM2), 5x (Gemma)")
        r.add("decision", f"{kind} p99", pct(lat, 99), pct(gbnf, 99), "llama-cpp-python grammar=GBNF")
        r.add("overhead", f"{kind} decision vs its forward passes (p50)", pct(lat, 50), pct(model_only, 50),
              "llama.cpp forward passes alone", target="<= 1.25x")
        b.report.raw[f"decision_{kind}"] = {"npcai_ms": lat, "gbnf_ms": gbnf, "model_only_ms": model_only,
                                              "usage": [r["usage"] for r in replies]}
    _new_options(b, c)
    try:
        import outlines  # noqa: F401

        b.report.raw["outlines"] = "installed but not benchmarked: its llama.cpp loop resets the cache"
    except ImportError:
        b.report.raw["outlines"] = "not installed"


def _new_options(b: Bench, c: Client) -> None:
    """A choice over options the NPC has not decided over before, after it has talked: a game's option
    lists change with the situation. Its first decision over them also scores their content-free prior;
    against the same decision again (the prior cached). That first decision once evaluated the NPC's
    whole history again in the option scorer, so its cost grew with the conversation."""
    c.npc("mira", b.persona, seed=1)
    for line in LINES[:4]:
        c.say("mira", line, max_tokens=40)
    first, again, cached = [], [], []
    for i in range(b.reps):
        ask = {"npc": "mira", "choices": CHOICES[:3] + [f"count to {i + 3}"]}  # a set of its own each time
        situation = SITUATIONS[i % len(SITUATIONS)]
        t = time.perf_counter()
        reply = c.decide(situation, **ask)
        first.append((time.perf_counter() - t) * 1000)
        cached.append(reply["usage"]["cached_tokens"])
        t = time.perf_counter()
        c.decide(situation, **ask)
        again.append((time.perf_counter() - t) * 1000)
    b.report.add("decision", "choice over new options after 4 exchanges (p50)",
                 pct(first, 50), pct(again, 50), "the same decision again (prior cached)")
    b.report.raw["decision_new_options"] = {"first_ms": first, "again_ms": again, "cached_tokens": cached}


def _replay(b: Bench, usage: dict[str, int], rows: int = 1, scorer: bool = False) -> float:
    """The same forward passes a decision made: its prompt batch (asking for ``rows`` logit rows), then
    its later steps; ``scorer``: with the attention choice of the option scorer, where a choice runs."""
    steps = max(1, usage["steps"])
    rest = usage["evaluated_tokens"] - usage["prompt_tokens"]
    later = [max(1, rest // (steps - 1))] * (steps - 1) if steps > 1 else []
    return b.forward_ms(usage["cached_tokens"], [usage["prompt_tokens"], *later], rows=rows, scorer=scorer)


def _choice_rows(b: Bench) -> int:
    """The logit rows a choice's option tree reads: the situation's last token and every option token
    but each option's last (``scoring.option_cells``), the options as they follow the default lead."""
    m, _, _ = b.native()
    return 1 + option_cells([m.tokenize(" " + c, add_bos=False, special=False) for c in CHOICES])


def _gbnf_decisions(b: Bench, kind: str) -> list[float]:
    import llama_cpp

    llm = b.llama()
    grammar = llama_cpp.LlamaGrammar.from_string(GBNF[kind], verbose=False)
    hint = ("\n\nWhat do you do? Answer with exactly one of: " + "; ".join(CHOICES) + "."
            if kind == "choice" else "\n\nAnswer in JSON.")
    out = []
    for i in range(b.reps + 1):
        msgs = [{"role": "system", "content": b.persona},
                {"role": "user", "content": SITUATIONS[(i - 1) % len(SITUATIONS)] + hint}]
        t = time.perf_counter()
        llm.create_chat_completion(msgs, grammar=grammar, temperature=0.0, max_tokens=48)
        if i:  # the first call warms the persona cache
            out.append((time.perf_counter() - t) * 1000)
    return out
