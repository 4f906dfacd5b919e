"""Where a choice decision's step goes (issue 13): its tokens by part, and the step beside llama.cpp alone.

The decision is `npcai bench --only decision`'s: Grik's persona, its six situations, its six options,
asked as the sidecar asks them (the NPC's chat, the question, the lead "I should"). Trees go through the
runtime's own option scorer (``npcai/model/scoring.py``), once its NPC's prefix is cached there, as in
every decision after an NPC's first. Printed, median ms over REPS rounds of the six situations:

- the tokens one decision evaluates, by part, and which batch rows ask for logits;
- ``OptionScorer.evaluate`` whole, its ``llama_decode``, its read-out (log-softmax of the rows), the rest;
- the same batch decoded again with 1 row and with every row asking for logits (each row pays the
  vocabulary's output projection);
- llama.cpp alone: the same number of tokens after the same cached prefix, one plain sequence in a plain
  context (no tree, no unified cache), with 1 and with the tree's number of logit rows; and 1, 16 and
  64 tokens, for the step's fixed and per-token parts;
- the same tree's batch in a unified context with flash attention on (a lever that changes rounding,
  so it is only timed here).

Run under the shared lock (about 1 minute on 2 cores):

    python bench/choice_step_costs.py smollm2-135m 5 [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from npcai.bench.report import median_ms
from npcai.bench.workload import CHOICES, SITUATIONS
from npcai.demo import load_scenario
from npcai.model import catalog, choices
from npcai.model.native import Batch, Context
from npcai.model.scoring import OptionTree, option_cells
from npcai.sidecar.admission import load_runtimes
from npcai.sidecar.npc import DEFAULT_LEAD, Npc, as_question
from npcai.sidecar.settings import Settings


def main(model: str, reps: int, threads: int) -> dict:
    rt = load_runtimes(Settings(threads=threads), {"decision": catalog.resolve(model)})["decision"]
    npc = Npc(id="grik", persona=load_scenario(None)["npcs"]["grik"]["persona"])
    options = choices.option_tokens(rt, DEFAULT_LEAD, CHOICES)
    keep = rt.prefix_tokens(npc.chat())
    stems = [rt.prompt_tokens(npc.chat(("user", as_question(s))), True, lead=DEFAULT_LEAD) for s in SITUATIONS]
    question = rt.text_tokens(" " + as_question("x").split(" ", 1)[1])
    lead = rt.text_tokens(DEFAULT_LEAD)
    tails = [len(s) - len(keep) for s in stems]
    probe = rt.prompt_tokens(npc.chat(("user", as_question("x"))), True, lead=DEFAULT_LEAD)
    scaffold = len(probe) - len(keep) - len(rt.text_tokens("x")) - len(question) - len(lead)
    parts = {"cached: persona, identity, user-turn opener": len(keep),
             "situation (median)": statistics.median(t - len(question) - len(lead) - scaffold for t in tails),
             "question": len(question), "end of turn, assistant opener": scaffold, "lead": len(lead),
             "options (shared starts once, no last tokens)": option_cells(options),
             "an option set's first decision also: the prior's stem after the prefix":
                 len(choices.prior_prompt(rt, npc, as_question(choices.CONTENT_FREE), DEFAULT_LEAD)) - len(keep),
             "and the options again": option_cells(options)}
    assert all(s[:len(keep)] == keep for s in stems), "the NPC's prefix is every stem's start"
    assert all(s[-len(lead):] == lead for s in stems)
    scorer = rt.scorer()
    decode, readout = scorer.ctx.decode, scorer._scores
    timed: dict[str, list[float]] = {"evaluate": [], "decode": [], "readout": []}

    def timing(key, fn):
        def run(*args):
            t = time.perf_counter()
            out = fn(*args)
            timed[key].append((time.perf_counter() - t) * 1e3)
            return out
        return run

    scorer.ctx.decode, scorer._scores = timing("decode", decode), timing("readout", readout)

    def tree(stem):
        t = OptionTree(seq=-1, pos=0, pending=[0], all_logits=True, stems=[stem], options=options, keep=len(keep))
        assert timing("evaluate", scorer.evaluate)(t) == 0

    tree(stems[-1])  # the NPC's prefix, cached in the scorer from now on
    for v in timed.values():
        v.clear()
    for _ in range(reps):
        for s in stems:
            tree(s)
    b = scorer.batch
    n = b.n
    flags = b.logits[:n].copy()
    rows = int(flags.sum())
    out: dict = {"model": model, "threads": threads, "reps": reps, "tokens_by_part": parts,
                 "batch_tokens": n, "logit_rows": rows,
                 "stem_tail_tokens": tails, **{f"{k}_ms": statistics.median(v) for k, v in timed.items()}}

    def again(flagged):  # the last tree's batch, decoded again with other rows asking for logits
        def run():
            scorer.ctx.seq_rm(0, len(keep))
            for seq in range(1, len(options)):
                scorer.ctx.seq_rm(seq)
                scorer.ctx.seq_copy(0, seq, len(keep))
            b.logits[:n] = flagged
            assert decode(b) == 0
        return median_ms(run, reps * 6)

    one = np.zeros_like(flags)
    one[np.flatnonzero(flags)[0]] = 1
    out["same_batch_ms"] = {"as_flagged": again(flags), "1_row": again(one), "every_row": again(np.ones_like(flags))}
    b.logits[:n] = flags

    plain = Context(rt.model, n_ctx=1024, n_batch=512, n_seq=1, threads=threads, flash_attn=rt._flash_attn)
    pb = Batch(512)
    pb.clear()
    for i, t in enumerate(keep):
        pb.add(t, i, 0, False)
    assert plain.decode(pb) == 0
    tail = stems[-1][len(keep):]

    def straight(k, n_rows):
        def run():
            plain.seq_rm(0, len(keep))
            pb.clear()
            for j in range(k):
                pb.add(tail[j % len(tail)], len(keep) + j, 0, j >= k - n_rows)
            assert plain.decode(pb) == 0
        return median_ms(run, reps * 6)

    out["llama_cpp_alone_ms"] = {f"{k} tokens, {r} rows": straight(k, r)
                                 for k, r in ((1, 1), (16, 1), (n, 1), (n, rows), (64, 1))}
    pb.close()
    plain.close()

    fa = Context(rt.model, n_ctx=scorer.capacity, n_batch=scorer.capacity, n_ubatch=512, n_seq=scorer.max_seqs,
                 threads=threads, flash_attn=True, unified=True)
    pb = Batch(len(keep))
    for i, t in enumerate(keep):
        pb.add(t, i, 0, False)
    assert fa.decode(pb) == 0

    def with_fa():
        fa.seq_rm(0, len(keep))
        for seq in range(1, len(options)):
            fa.seq_rm(seq)
            fa.seq_copy(0, seq, len(keep))
        assert fa.decode(b) == 0

    out["same_batch_flash_attn_on_ms"] = median_ms(with_fa, reps * 6)
    pb.close()
    fa.close()
    rt.close()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("reps", nargs="?", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    report = main(args.model, args.reps, args.threads)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
