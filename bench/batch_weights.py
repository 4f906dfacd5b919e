"""A model's weights in several llama.cpp types, side by side: what a step of N tokens costs in each, and how close
each stays to the shipped file's next-token predictions.

This is how the option scorer's weights were chosen (``native.batch_weights``; docs/PERFORMANCE.md, "Session 15"):
a choice decision's step is one batch of about 32 tokens after the NPC's cached prefix, reading 11 logit rows, while
a stream steps one token at a time. Each type is converted once from the shipped file into ``--dir`` with
llama.cpp's own quantizer, then timed in rounds (each type in turn within a round, so a noisy machine's drift falls
on all alike): 62 cached tokens, then a step of N tokens (the 32-token step reads 11 rows, smaller ones one per
token, as N streams would), removed after each repetition.

    cd /tmp && python3 /path/to/bench/batch_weights.py smollm2-135m Q8_0,BF16,F16 --reps 15
    cd /tmp && python3 /path/to/bench/batch_weights.py gemma3-270m Q4_K_M,BF16,Q8_0 --reps 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npcai.bench.weights import closeness, next_token_log_probs
from npcai.bench.workload import SITUATIONS
from npcai.model import catalog
from npcai.model.native import Batch, Context, Model, convert_weights

SIZES = (1, 4, 8, 16, 32)
CACHED = 62  # the bench's persona, identity exchange and user-turn opener (choice_step_costs.py)
ROWS = 11  # a 6-way choice's logit rows: the stem's last token and each option token but the last


def _shipped_type(path: Path, kinds: list[str]) -> str:
    """Which of ``kinds`` the shipped file is, by its name (llama.cpp describes Q4_K_M as "Q4_K - Medium")."""
    return next((k for k in kinds if k.lower() in path.name.lower()), "shipped")


def _step_ms(ctx: Context, b: Batch, tokens: list[int], n: int) -> float:
    b.clear()
    for i in range(n):
        b.add(tokens[CACHED + i], CACHED + i, 1, i >= n - ROWS if n == 32 else True)
    start = time.perf_counter()
    assert ctx.decode(b) == 0
    ms = (time.perf_counter() - start) * 1000
    ctx.seq_rm(1, CACHED, -1)
    return ms


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a catalog name")
    ap.add_argument("types", help="llama.cpp weight types, comma-separated; the shipped one is timed as shipped")
    ap.add_argument("--reps", type=int, default=15, help="steps of each size per type and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/npcai-batch-weights"), help="where conversions go")
    a = ap.parse_args(argv)
    catalog.resolve(a.model)  # pulled and verified, as serve does
    shipped = catalog.cached_path(a.model)
    own = _shipped_type(shipped, a.types.split(","))
    a.dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in a.types.split(","):
        paths[kind] = shipped if kind == own else a.dir / f"{shipped.stem}-as-{kind}.gguf"
        if not paths[kind].exists():
            convert_weights(shipped, paths[kind], kind)
    text = " ".join(SITUATIONS) * 20
    times: dict[str, dict[int, list[float]]] = {k: {n: [] for n in SIZES} for k in paths}
    near: dict[str, dict[str, float]] = {}
    reference = None
    for kind in [own, *(k for k in paths if k != own)]:  # the shipped file's predictions first, as the reference
        m = Model(shipped if kind == own else paths[kind])
        ctx = Context(m, n_ctx=1024, n_batch=512, n_seq=2, threads=a.threads)
        b = Batch(512)
        lp = next_token_log_probs(m, ctx, b, m.tokenize(text, add_bos=True)[:200])
        if reference is None:
            reference = lp
        elif kind in paths:
            near[kind] = closeness(reference, lp)
        b.close(), ctx.close(), m.close()
    for _ in range(a.rounds):
        for kind, path in paths.items():
            m = Model(path)
            ctx = Context(m, n_ctx=1024, n_batch=512, n_seq=2, threads=a.threads)
            b = Batch(512)
            tokens = m.tokenize(text, add_bos=True)
            b.clear()
            for i in range(CACHED):
                b.add(tokens[i], i, 1, False)
            assert ctx.decode(b) == 0
            for _ in range(a.reps):
                for n in SIZES:
                    times[kind][n].append(_step_ms(ctx, b, tokens, n))
            b.close(), ctx.close(), m.close()
    out = {"command": " ".join(sys.argv), "model": a.model, "shipped": own, "threads": a.threads,
           "p50_ms": {k: {n: float(np.median(v[n])) for n in SIZES} for k, v in times.items()},
           "size_mib": {k: p.stat().st_size / 2**20 for k, p in paths.items()}, "vs_shipped": near}
    print(f"{'type':8s} " + " ".join(f"{f'{n} tok':>8s}" for n in SIZES) + "   MiB   KL vs shipped  same top")
    for kind in paths:
        row = " ".join(f"{out['p50_ms'][kind][n]:8.1f}" for n in SIZES)
        c = near.get(kind)
        tail = f"{c['kl_mean']:10.4f}  {c['top1_agree_pct']:7.1f} %" if c else "  (shipped)"
        print(f"{kind:8s} {row} {out['size_mib'][kind]:6.0f} {tail}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
