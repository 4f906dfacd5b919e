"""Flash attention on or off, by history length: what SmolLM2's catalog choice trades (issue 18).

llama.cpp alone (npcai.model.native), the sidecar's context (16,384 cells, 16 sequences, a KV stream
per sequence, 2 threads), each attention choice with n_ubatch 256 and 64. After HISTORY cells in every
sequence, median ms of: ``streamsN`` (N sequences' next tokens, every token's logits: a decode step of
N NPC streams) and ``chunkP`` (a P-token prompt chunk of one more sequence, its last token's logits:
a decision's or a first token's step). Printed per history; docs/PERFORMANCE.md, issue 18, session 5.

Run (about 5 minutes on 2 cores, under the shared lock):

    python bench/fa_by_history.py smollm2-135m 150,600,900 256,64
"""

from __future__ import annotations

import statistics
import sys
import time

from npcai.model import catalog
from npcai.model.native import Batch, Context, Model

name = sys.argv[1]
hists = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [150, 300, 600, 900]
ubs = [int(x) for x in sys.argv[3].split(",")] if len(sys.argv) > 3 else [256]
model = Model(catalog.resolve(name)); batch = Batch(256)
ctxs = {(fa, ub): Context(model, n_ctx=16384, n_batch=256, n_seq=16, threads=2, flash_attn=fa, n_ubatch=ub)
        for fa in (False, True) for ub in ubs}

def feed(ctx, seq, n):
    for start in range(0, n, 256):
        batch.clear(); k = min(256, n - start)
        for i in range(k):
            batch.add(1, start + i, seq, i == k - 1)
        assert ctx.decode(batch) == 0

def timed(ctx, tokens, history, reps=5):
    times = []
    for _ in range(reps):
        batch.clear()
        for seq, pos, lg in tokens:
            batch.add(1, pos, seq, lg)
        t = time.perf_counter(); assert ctx.decode(batch) == 0; times.append((time.perf_counter() - t) * 1000)
        for seq in {s for s, _, _ in tokens}:
            ctx.seq_rm(seq, history)
    return statistics.median(times[1:])

for h in hists:
    cases = {f"streams{n}": [(s, h, True) for s in range(n)] for n in (8, 16)}
    for p in (8, 16, 26, 32, 64):
        cases[f"chunk{p}"] = [(8, h + i, i == p - 1) for i in range(p)]
    res = {k: {} for k in ctxs}
    for ctx in ctxs.values():
        for s in range(16):
            ctx.seq_rm(s); feed(ctx, s, h)
    for _ in range(2):
        for key, ctx in ctxs.items():
            for c, toks in cases.items():
                res[key].setdefault(c, []).append(timed(ctx, toks, h))
    print(f"{name} history {h}")
    for (fa, ub), cols in res.items():
        print(f"  FA {'on ' if fa else 'off'} ub {ub:3d} " + " ".join(f"{c}={statistics.median(v):.1f}" for c, v in cols.items()), flush=True)
