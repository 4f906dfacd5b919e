"""`bench --only many`: many NPCs talking at once, against llama.cpp's own batch.

Two ceilings, both measured just before and just after the streams and averaged, so that drift in
this machine's speed falls on both sides:
- the hardware's: llama.cpp alone evaluating one batch of N tokens, one for each of N sequences
  that each hold ``HISTORY`` cells in one unified cache, with llama.cpp's own attention choice (the
  target is judged against this one);
- npcai's own layout: the same batch in the sidecar's context (a KV stream per sequence, the
  catalog's attention choice).
"""

from __future__ import annotations

import statistics
import time
from itertools import pairwise

from npcai.bench.harness import Bench
from npcai.bench.report import pct
from npcai.bench.workload import (
    LINES,
)
from npcai.client import Client
from npcai.model.native import Batch, Context, Model

#: Cells each sequence holds in the ceilings' batches: about a persona, a line and a reply so far.
HISTORY = 150
_STEPS = 8  # timed steps per ceiling measurement


class _UnifiedBatch:
    """llama.cpp alone: N sequences in one unified KV cache, stepped one token each, in one batch."""

    def __init__(self, b: Bench, max_seqs: int):
        self._model = Model(b.path)
        # A unified cache's size costs memory only: attention covers the cells in use.
        self._ctx = Context(self._model, n_ctx=max_seqs * (HISTORY + 2 * _STEPS) + 256, n_batch=b.settings.n_batch,
                            n_seq=max_seqs, threads=b.threads, unified=True)
        self._batch = Batch(b.settings.n_batch)
        self._n_batch = b.settings.n_batch

    def tok_s(self, n: int) -> float:
        ctx, batch, tok = self._ctx, self._batch, 1
        for s in range(ctx.n_seq):
            ctx.seq_rm(s)
        for s in range(n):  # the histories, not timed
            for start in range(0, HISTORY, self._n_batch):
                batch.clear()
                k = min(self._n_batch, HISTORY - start)
                for i in range(k):
                    batch.add(tok, start + i, s, i == k - 1)
                ctx.decode(batch)
        times = []
        for step in range(_STEPS):
            batch.clear()
            for s in range(n):
                batch.add(tok, HISTORY + step, s, True)
            start = time.perf_counter()
            ctx.decode(batch)
            ctx.logits(batch.n - 1, self._model.n_vocab).argmax()  # touch the logits like a sampler would
            times.append(time.perf_counter() - start)
        return n / statistics.median(times)

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()
        self._model.close()


def run(b: Bench, c: Client) -> None:
    counts = [1, 2, 4, 8] if b.quick else [1, 2, 4, 8, 16]
    raw = {}
    hardware = _UnifiedBatch(b, max(counts))

    def own(n: int) -> float:
        return n / (b.forward_ms(HISTORY, [n] * _STEPS, seqs=n) / _STEPS / 1000)

    try:
        for n in counts:
            before = (hardware.tok_s(n), own(n))  # and again after the streams
            for k in range(n):
                c.npc(f"crowd{k}", b.personas[k % 4], seed=k)
            handles = [c.request("say", npc=f"crowd{k}", text=LINES[k % 4], max_tokens=32, temperature=0.8)
                       for k in range(n)]
            stamps: dict[int, list[float]] = {h.id: [] for h in handles}
            seen = {h.id: 0 for h in handles}
            while not all(h.finished for h in handles):
                c.poll(max_messages=256, budget_us=20_000)
                now = time.perf_counter()
                for h in handles:
                    while seen[h.id] < len(h.chunks):
                        stamps[h.id].append(now)
                        seen[h.id] += 1
                c.wait_for_reply(0.005)  # block, not spin: a spinning client steals a core
            # Steady state: from the moment every stream has started until the first one ends.
            lo = max(s[0] for s in stamps.values() if s)
            hi = min(s[-1] for s in stamps.values() if s)
            inside = sum(1 for s in stamps.values() for t in s if lo < t <= hi)
            agg = inside / (hi - lo) if hi > lo else 0.0
            # Gaps over each stream's whole life: other NPCs' prompts arriving are part of it.
            gaps = [(t1 - t0) * 1000 for s in stamps.values() for t0, t1 in pairwise(s)]
            hw, layout = ((x + y) / 2 for x, y in zip(before, (hardware.tok_s(n), own(n))))
            b.report.add("many", f"{n} streams: aggregate tokens/s", agg, hw,
                         f"llama.cpp alone, one batch of {n} tokens", unit="tok/s", target=">= 0.85x")
            b.report.add("many", f"{n} streams: ... vs npcai's own KV layout", agg, layout,
                         f"one batch of {n} tokens, a stream per sequence", unit="tok/s")
            mean = statistics.mean(gaps) if gaps else None
            b.report.add("many", f"{n} streams: inter-token gap p50 / mean", pct(gaps, 50), mean, "mean", unit="ms")
            b.report.add("many", f"{n} streams: inter-token gap p99 / mean", pct(gaps, 99), mean, "mean", unit="ms",
                         target="<= 2x" if n >= 8 else "")
            raw[n] = {"aggregate_tok_s": agg, "ceiling_tok_s": hw, "own_layout_tok_s": layout,
                      "gap_p50_ms": pct(gaps, 50), "gap_p99_ms": pct(gaps, 99), "gap_mean_ms": mean,
                      "gap_max_ms": max(gaps) if gaps else None}
    finally:
        hardware.close()
    b.report.raw["many"] = raw
