"""Token sampling over large vocabularies: mask, temperature, top-k, top-p, draw.

The kernels read the constraint's packed bitmask (32 tokens per int32 word, the
layout llguidance fills) directly, so a 262k-token vocabulary is never expanded
into a boolean array. bench/test_bench_sampling.py holds each kernel against
the numpy version it replaces.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

try:
    from numba import njit
except ImportError:  # the bundled sidecar (npcai bundle) ships sample_token compiled ahead of time, without LLVM
    njit = None

NO_MASK = np.empty((0,), dtype=np.int32)

#: What one unmasked draw needs: (logits, temperature, top_k, top_p, uniform draw in [0, 1)).
Draw = tuple[np.ndarray, float, int, float, float]

_TOGETHER_FROM = 4  # fewer draws than this are not worth a hand-off to the helper thread
#: ...nor fewer logits than this in all. Every draw is a GIL hand-off between the two threads, and right
#: after a step llama.cpp's worker thread still spins on the other core: on SmolLM2's 49k vocabulary,
#: 8 streams' draws took 0.53 ms on two threads against 8 x 0.047 ms of kernel on one (issue 18).
_TOGETHER_LOGITS = 1 << 20
_helper: ThreadPoolExecutor | None = None


#: sample_token's types, as numba's ahead-of-time compiler takes them (npcai/bundle/kernels.py).
AOT_SIGNATURE = "i8(f4[:], i4[:], f8, i8, f8, f8)"


def _kernel(fn):
    """A numba kernel; without numba (the bundle), the Python function stands in until replaced below."""
    return njit(cache=True, nogil=True)(fn) if njit is not None else fn


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95


@_kernel
def _allowed(mask: np.ndarray, i: int) -> bool:
    return mask.size == 0 or ((mask[i >> 5] >> (i & 31)) & 1) != 0


@_kernel
def _sift_down(val, idx, k, r):
    """Restore the min-heap property of val[:k] (idx follows) below position r."""
    while True:
        c = 2 * r + 1
        if c >= k:
            return
        if c + 1 < k and val[c + 1] < val[c]:
            c += 1
        if val[r] <= val[c]:
            return
        val[r], val[c] = val[c], val[r]
        idx[r], idx[c] = idx[c], idx[r]
        r = c


@_kernel
def _top_candidates(logits, mask, k):
    """The k highest allowed logits, in one pass with a k-element min-heap."""
    val = np.empty(k, dtype=np.float32)
    idx = np.empty(k, dtype=np.int64)
    size = 0
    for i in range(logits.shape[0]):
        v = logits[i]
        if v == -np.inf or not _allowed(mask, i):
            continue
        if size < k:
            val[size] = v
            idx[size] = i
            size += 1
            if size == k:
                for r in range(k // 2 - 1, -1, -1):
                    _sift_down(val, idx, k, r)
        elif v > val[0]:
            val[0] = v
            idx[0] = i
            _sift_down(val, idx, k, 0)
    return val[:size], idx[:size]


@_kernel
def sample_token(logits, mask, temperature, top_k, top_p, u):
    """Draw one token id from ``logits`` restricted to ``mask``; -1 if nothing is allowed.

    ``u`` is a uniform draw in [0, 1) supplied by the caller's seeded generator, so a
    request's choices are reproducible. temperature <= 0 means greedy.
    """
    n = logits.shape[0]
    if temperature <= 0.0:
        best = -1
        best_val = -np.inf
        for i in range(n):
            if logits[i] > best_val and _allowed(mask, i):
                best_val = logits[i]
                best = i
        return best
    k = top_k if 0 < top_k < n else n
    val, idx = _top_candidates(logits, mask, k)
    m = val.shape[0]
    if m == 0:
        return -1
    order = np.argsort(-val)
    top = val[order[0]]
    probs = np.empty(m, dtype=np.float64)
    total = 0.0
    for r in range(m):
        p = np.exp((val[order[r]] - top) / temperature)
        probs[r] = p
        total += p
    # Nucleus: the smallest prefix of the sorted candidates holding top_p of the mass.
    cutoff = m
    if top_p < 1.0:
        acc = 0.0
        for r in range(m):
            acc += probs[r] / total
            if acc >= top_p:
                cutoff = r + 1
                break
    kept = 0.0
    for r in range(cutoff):
        kept += probs[r]
    target = u * kept
    acc = 0.0
    for r in range(cutoff):
        acc += probs[r]
        if acc > target:
            return idx[order[r]]
    return idx[order[cutoff - 1]]


if njit is None:
    # Compiled from the function above at bundle time: as fast as the JIT (0.08 ms on a 49k vocabulary,
    # 0.44 ms on 262k) with no LLVM to ship or start (docs/PERFORMANCE.md, "The bundle").
    from npcai.model._sampling_aot import sample_token  # noqa: F811


def sample_tokens(draws: list[Draw]) -> list[int]:
    """``sample_token`` for many streams after one step, half of them on a helper thread (the kernel
    releases the GIL) where there is enough of them to pay for the hand-off. On Gemma-270M's
    262k-token vocabulary, 16 streams' draws right after a step took 7.7 ms on one thread and 5.5 ms
    on two, against a 75 ms step."""
    global _helper
    if len(draws) < _TOGETHER_FROM or sum(d[0].shape[0] for d in draws) < _TOGETHER_LOGITS:
        return _sample_all(draws)
    if _helper is None:
        _helper = ThreadPoolExecutor(1, thread_name_prefix="npcai-sampling")
    half = len(draws) // 2
    theirs = _helper.submit(_sample_all, draws[half:])
    return _sample_all(draws[:half]) + theirs.result()


def _sample_all(draws: list[Draw]) -> list[int]:
    return [int(sample_token(logits, NO_MASK, t, k, p, u)) for logits, t, k, p, u in draws]


def sample_token_numpy(logits: np.ndarray, mask: np.ndarray, temperature: float, top_k: int, top_p: float,
                       u: float) -> int:
    """The plain numpy version of sample_token, kept as the benchmark's reference."""
    x = logits.astype(np.float64, copy=True)
    if mask.size:
        bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[: x.size].astype(bool)
        x[~bits] = -np.inf
    if temperature <= 0:
        return int(np.argmax(x))
    order = np.argsort(-x)
    if 0 < top_k < order.size:
        order = order[:top_k]
    order = order[np.isfinite(x[order])]
    p = np.exp((x[order] - x[order[0]]) / temperature)
    p /= p.sum()
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:cut], p[:cut]
        p /= p.sum()
    return int(order[np.searchsorted(np.cumsum(p), u, side="right").clip(0, order.size - 1)])
