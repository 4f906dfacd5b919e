"""Does a quantized KV cache take away flash attention's slower prompt chunks after long histories? (issue 18)

SmolLM2 runs with flash attention off because, on this build's CPU kernel, FA makes prompt chunks
slower once histories grow (bench/fa_by_history.py), though it makes many streams' steps faster. Here
llama.cpp alone, the sidecar's context (16,384 cells, 16 sequences, a KV stream each, 2 threads,
n_ubatch 256): FA off with an f16 cache, and FA on with f16, with K in q8_0, and with K and V in
q8_0 (llama.cpp quantizes V only with FA). After HISTORY cells in every sequence, median ms of
``streamsN`` (N sequences' next tokens) and ``chunkP`` (a P-token prompt chunk of one sequence).

    python bench/fa_kv_types.py smollm2-135m 150,600,900     # about 5 minutes on 2 cores
"""

import statistics
import sys
import time

import llama_cpp as L

from npcai.model import catalog
from npcai.model.native import Batch, Context, Model

name = sys.argv[1]; hists = [int(x) for x in sys.argv[2].split(",")]
model = Model(catalog.resolve(name))
batch = Batch(256)
orig = L.llama_context_default_params
def ctx_with(fa, tk, tv):
    def params():
        p = orig(); p.type_k = tk; p.type_v = tv; return p
    L.llama_context_default_params = params
    try:
        return Context(model, n_ctx=16384, n_batch=256, n_seq=16, threads=2, flash_attn=fa, n_ubatch=256)
    finally:
        L.llama_context_default_params = orig
F16, Q8 = L.GGML_TYPE_F16, L.GGML_TYPE_Q8_0
ctxs = {"off f16": ctx_with(False, F16, F16), "on f16": ctx_with(True, F16, F16),
        "on K q8": ctx_with(True, Q8, F16), "on KV q8": ctx_with(True, Q8, Q8)}
def feed(ctx, seq, n):
    for start in range(0, n, 256):
        batch.clear(); k = min(256, n - start)
        for i in range(k): batch.add(1, start + i, seq, i == k - 1)
        assert ctx.decode(batch) == 0
def timed(ctx, tokens, history, reps=5):
    times = []
    for _ in range(reps):
        batch.clear()
        for seq, pos, lg in tokens: batch.add(1, pos, seq, lg)
        t = time.perf_counter(); assert ctx.decode(batch) == 0; times.append((time.perf_counter() - t) * 1000)
        for seq in {s for s, _, _ in tokens}: ctx.seq_rm(seq, history)
    return statistics.median(times[1:])
for h in hists:
    cases = {f"streams{n}": [(s, h, True) for s in range(n)] for n in (8, 16)}
    for p in (16, 32, 64):
        cases[f"chunk{p}"] = [(8, h + i, i == p - 1) for i in range(p)]
    res = {k: {} for k in ctxs}
    for ctx in ctxs.values():
        for s in range(16): ctx.seq_rm(s); feed(ctx, s, h)
    for _ in range(2):
        for key, ctx in ctxs.items():
            for c, toks in cases.items(): res[key].setdefault(c, []).append(timed(ctx, toks, h))
    print(f"{name} history {h}")
    for key, cols in res.items():
        print(f"  {key:9s} " + " ".join(f"{c}={statistics.median(v):.1f}" for c, v in cols.items()), flush=True)
