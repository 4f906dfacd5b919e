"""`bench --only kv`: the KV cache's cost."""

from __future__ import annotations

import statistics
import time
from typing import Any

from npcai.bench.harness import Bench
from npcai.model import catalog
from npcai.model.native import Batch, Context, Model


def run(bench: Bench) -> None:
    """The KV cache's layout and what it costs. Why every NPC has its own KV stream, what parking an
    NPC that gives way saves, and the flash-attention choice: one NPC's step as other
    NPCs' cells fill the cache, as run (a stream per sequence) vs one unified cache with llama.cpp's
    own attention choice (how npcai ran before); and a step after a long history, FA on vs off."""
    m = Model(bench.path)
    entry = catalog.entry_for(bench.path)
    fa = entry.flash_attn if entry else None
    b = Batch(bench.settings.n_batch)
    raw: dict[str, Any] = {}

    def feed(ctx: Context, seq: int, start: int, n: int) -> None:
        pos = start
        while pos < start + n:
            k = min(bench.settings.n_batch, start + n - pos)
            b.clear()
            for i in range(k):
                b.add(1, pos + i, seq, i == k - 1)
            if ctx.decode(b) != 0:
                raise RuntimeError("llama_decode failed")
            pos += k

    def step_ms(ctx: Context, cached: int, n: int) -> float:
        times = []
        for _ in range(bench.reps // 3 or 4):
            ctx.seq_rm(0, cached)
            start = time.perf_counter()
            feed(ctx, 0, cached, n)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    try:
        for unified in (True, False):
            ctx = Context(m, n_ctx=bench.settings.n_ctx, n_batch=bench.settings.n_batch, n_seq=bench.settings.n_seq,
                          threads=bench.threads, flash_attn=None if unified else fa, unified=unified)
            feed(ctx, 0, 0, 100)
            step_ms(ctx, 100, 22)  # warm-up: the first steps of a fresh context run slower
            alone = step_ms(ctx, 100, 22)
            for seq in range(1, bench.settings.n_seq):  # other NPCs with 400-token histories
                feed(ctx, seq, 0, 400)
            raw["unified" if unified else "streams"] = {"alone_ms": alone, "crowded_ms": step_ms(ctx, 100, 22)}
            if not unified:  # an NPC that gave way coming back: its parked cells vs evaluating them again
                start = time.perf_counter()
                parked = ctx.seq_save(1)
                ctx.seq_rm(1)
                ctx.seq_load(1, parked)
                park_ms = (time.perf_counter() - start) * 1000
                ctx.seq_rm(1)
                start = time.perf_counter()
                feed(ctx, 1, 0, 400)
                raw["park"] = {"park_and_restore_ms": park_ms, "evaluate_ms": (time.perf_counter() - start) * 1000,
                               "bytes": len(parked)}
            ctx.close()
        others = 400 * (bench.settings.n_seq - 1)
        before = "one unified KV cache, as before"
        bench.report.add("kv", f"22-token step beside {others} cells of other NPCs (p50)",
                        raw["streams"]["crowded_ms"], raw["unified"]["crowded_ms"], before)
        bench.report.add("kv", "... the same step with no other NPC resident (p50)",
                        raw["streams"]["alone_ms"], raw["unified"]["alone_ms"], before)
        bench.report.add("kv", "an NPC of 400 cells back after giving way: park + restore",
                        raw["park"]["park_and_restore_ms"], raw["park"]["evaluate_ms"], "evaluating it again")
        if fa is not None:
            for label, flag in (("configured", fa), ("other", not fa)):
                ctx = Context(m, n_ctx=bench.settings.n_ctx, n_batch=bench.settings.n_batch,
                              n_seq=bench.settings.n_seq, threads=bench.threads, flash_attn=flag)
                feed(ctx, 0, 0, 900)
                step_ms(ctx, 900, 26)  # warm-up
                raw[f"flash_attn_{label}"] = {"flash_attn": flag, "ms": step_ms(ctx, 900, 26)}
                ctx.close()
            bench.report.add("kv", f"26-token step after 900 cached, flash attention {'on' if fa else 'off'}"
                            " (p50)", raw["flash_attn_configured"]["ms"], raw["flash_attn_other"]["ms"],
                            f"flash attention {'off' if fa else 'on'}")
    finally:
        b.close()
        m.close()
    bench.report.raw["kv"] = raw
