"""`bench --only weights`: the model files' own cost."""

from __future__ import annotations

import time

import numpy as np

from npcai.bench.harness import Bench
from npcai.bench.report import pct
from npcai.bench.workload import (
    SITUATIONS,
)
from npcai.model import catalog
from npcai.model.native import Batch, Context, Model


def run(bench: Bench) -> None:
    """A converted model beside its shipped file: prompt and token cost, and how close its predictions stay."""
    entry = catalog.CATALOG.get(bench.model)
    if entry is None or entry.cpu_weights is None:
        return
    shipped = catalog.cached_path(bench.model)
    text = " ".join(bench.personas) + " " + " ".join(SITUATIONS)
    runs = {}
    for label, path in (("shipped", shipped), ("run", bench.path)):
        m = Model(path)
        ctx = Context(m, n_ctx=1024, n_batch=bench.settings.n_batch, n_seq=2, threads=bench.threads)
        b = Batch(bench.settings.n_batch)
        tokens = m.tokenize(text, add_bos=True)[:200]
        log_probs = next_token_log_probs(m, ctx, b, tokens)
        timing = {}
        for n in (1, 16, 64):
            samples = []
            for _ in range(bench.reps // 2 or 4):
                b.clear()
                for i in range(n):
                    b.add(tokens[i], 100 + i, 1, i == n - 1)
                t0 = time.perf_counter()
                ctx.decode(b)
                samples.append((time.perf_counter() - t0) * 1000)
                ctx.seq_rm(1)
            timing[n] = pct(samples, 50)
        runs[label] = (timing, log_probs)
        b.close(), ctx.close(), m.close()
    (t_run, lp_run), (t_ship, lp_ship) = runs["run"], runs["shipped"]
    name = f"{entry.cpu_weights} vs shipped {shipped.stem.rsplit('.', 1)[-1]}"
    for n, what in ((16, "16-token prompt"), (64, "64-token prompt"), (1, "one token")):
        bench.report.add("weights", f"{what} ({name})", t_run[n], t_ship[n], "shipped file")
    near = closeness(lp_ship, lp_run)
    bench.report.add("weights", "next-token KL(shipped || run), mean", near["kl_mean"], unit="nats")
    bench.report.add("weights", "same most likely next token", near["top1_agree_pct"], unit="%")
    bench.report.raw["weights"] = {"run_ms": t_run, "shipped_ms": t_ship, **near}


def next_token_log_probs(m: Model, ctx: Context, b: Batch, tokens: list[int]) -> np.ndarray:
    """The log-probabilities of every next token at each position of ``tokens``, evaluated in sequence 0."""
    b.clear()
    for i, t in enumerate(tokens):
        b.add(t, i, 0, True)
    if ctx.decode(b) != 0:
        raise RuntimeError("llama.cpp could not evaluate the text")
    logits = np.stack([ctx.logits(i, m.n_vocab).astype(np.float64) for i in range(len(tokens))])
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def closeness(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """How near ``other``'s next-token predictions stay to ``reference``'s (both log-probabilities by position):
    KL(reference || other), mean and 99th percentile, and how often the most likely token is the same."""
    kl = (np.exp(reference) * (reference - other)).sum(axis=1)
    agree = (reference.argmax(axis=1) == other.argmax(axis=1)).mean() * 100
    return {"kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)), "top1_agree_pct": float(agree)}
