"""Which KV layout batches many NPC streams best? The llama.cpp-alone measurements behind issue 18.

Every step is timed with llama.cpp directly (npcai.model.native), 2 threads, in the sidecar's
context size (16,384 cells, 16 sequences), for the two layouts llama.cpp offers: a KV stream per
sequence (npcai's) and one unified cache holding only the active sequences, each with flash
attention off and on. Printed, in ms (median of the timed steps; docs/PERFORMANCE.md, "Many streams
at llama.cpp's own batch"):

- ``streams N``: N sequences of ``history`` cells each, one token each, every token's logits (a
  decode step of N NPC streams);
- ``chunk N``: N tokens of one sequence, every token's logits (the same matmuls, one history);
- ``mix N+P`` / ``alone P``: 8 streams' next tokens with one P-token prompt chunk of a ninth
  sequence, and that chunk alone.

Run:

    python bench/many_layouts.py smollm2-135m      # about 3 minutes on 2 cores; gemma3-270m about 4
"""

from __future__ import annotations

import statistics
import sys
import time

from npcai.model import catalog
from npcai.model.native import Batch, Context, Model


def main(name: str) -> None:
    model = Model(catalog.resolve(name))
    batch = Batch(256)
    contexts = {f"{'unified' if unified else 'streams'}, FA {'on' if fa else 'off'}":
                Context(model, n_ctx=16384, n_batch=256, n_seq=16, threads=2, flash_attn=fa, unified=unified)
                for unified in (True, False) for fa in (False, True)}

    def feed(ctx: Context, seq: int, n: int) -> None:
        for start in range(0, n, 256):
            batch.clear()
            k = min(256, n - start)
            for i in range(k):
                batch.add(1, start + i, seq, i == k - 1)
            assert ctx.decode(batch) == 0

    def timed(ctx: Context, tokens: list[tuple[int, int, bool]], history: int, reps: int = 7) -> float:
        times = []
        for _ in range(reps):
            batch.clear()
            for seq, pos, logits in tokens:
                batch.add(1, pos, seq, logits)
            start = time.perf_counter()
            assert ctx.decode(batch) == 0
            times.append((time.perf_counter() - start) * 1000)
            for seq in {s for s, _, _ in tokens}:
                ctx.seq_rm(seq, history)
        return statistics.median(times[2:])

    for history in (150, 600):
        rows: dict[str, dict[str, list[float]]] = {k: {} for k in contexts}
        for ctx in contexts.values():
            for seq in range(16):
                ctx.seq_rm(seq)
            for seq in range(16):
                feed(ctx, seq, history)
        cases = {}
        for n in (8, 16):
            cases[f"streams {n}"] = [(s, history, True) for s in range(n)]
            cases[f"chunk {n}"] = [(0, history + i, True) for i in range(n)]
        for p in (16, 32, 64):
            prompt = [(8, history + i, i == p - 1) for i in range(p)]
            cases[f"mix 8+{p}"] = [(s, history, True) for s in range(8)] + prompt
            cases[f"alone {p}"] = prompt
        for _ in range(2):  # interleaved: drift falls on every layout alike
            for label, ctx in contexts.items():
                for case, tokens in cases.items():
                    rows[label].setdefault(case, []).append(timed(ctx, tokens, history))
        print(f"{name}, {history} cells of history per sequence (ms)")
        for label, cols in rows.items():
            print(f"  {label:<18}" + "  ".join(f"{case}={statistics.median(v):.1f}" for case, v in cols.items()))
    batch.close()
    for ctx in contexts.values():
        ctx.close()
    model.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")
