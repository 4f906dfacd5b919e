"""Repetition control: tiny models fall into loops ("A.A.A.A…", the same sentence again), and a
loop runs to the token cap.

``dry`` is DRY ("don't repeat yourself", as in llama.cpp's sampler of that name): a token that
would extend a run of tokens already seen earlier is penalised, more the longer the run. Short
runs (up to ``allowed`` tokens) are free, so ordinary words and JSON punctuation that recur are
not touched. It only lowers logits: under a constraint the mask still decides what is legal.
"""

from __future__ import annotations

import numpy as np

#: llama.cpp's DRY defaults (common/common.h): multiplier, base and allowed length.
MULTIPLIER = 0.8
BASE = 1.75
ALLOWED = 2
_MAX_RUN = 50  # runs longer than this are penalised as this long (the penalty is already huge)


def dry(logits: np.ndarray, history: list[int], *, multiplier: float = MULTIPLIER, base: float = BASE,
        allowed: int = ALLOWED, window: int = 512) -> None:
    """Lower, in place, the logits of tokens that would repeat a run of ``history`` (oldest first)."""
    h = history[-window:]
    n = len(h)
    if n < 2:
        return
    last = h[-1]
    runs: dict[int, int] = {}
    for i in range(n - 1):
        if h[i] != last:
            continue
        k = 1  # h[i] matches the last token; how far back does the match go?
        while k < i + 1 and k < _MAX_RUN and h[i - k] == h[n - 1 - k]:
            k += 1
        nxt = h[i + 1]
        if k > runs.get(nxt, 0):
            runs[nxt] = k
    for token, k in runs.items():
        if k >= allowed:
            logits[token] -= multiplier * base ** (k - allowed)


def forbid(mask: np.ndarray, tokens: np.ndarray) -> None:
    """Take ``tokens`` (a packed bitmask like ``mask``) out of ``mask`` in place, unless nothing else is
    allowed: a guard never leaves the grammar without a way on."""
    rest = mask & ~tokens
    if rest.any():
        mask[:] = rest


def forbid_each(mask: np.ndarray, tokens: list[int]) -> None:
    """``forbid`` for a few token ids rather than a bitmask."""
    rest = mask.copy()
    words = rest.view(np.uint32)
    for tok in tokens:
        words[tok >> 5] &= np.uint32(0xFFFFFFFF ^ (1 << (tok & 31)))
    if rest.any():
        mask[:] = rest


def prefer(mask: np.ndarray, tokens: np.ndarray) -> None:
    """Keep only ``tokens`` (a packed bitmask like ``mask``) in ``mask``, in place, where the grammar
    allows any of them; else leave it as it is."""
    only = mask & tokens
    if only.any():
        mask[:] = only


def json_quotes(piece: bytes, escaped: bool = False) -> tuple[bool, bool]:
    """Whether ``piece`` holds a double quote that is not escaped (one that ends or starts a JSON
    string), and whether it ends in an unfinished backslash escape. ``escaped``: the text before it did."""
    quotes, escaped = json_quote_count(piece, escaped)
    return quotes > 0, escaped


def json_quote_count(piece: bytes, escaped: bool = False) -> tuple[int, bool]:
    """How many unescaped double quotes ``piece`` holds (each starts or ends a JSON string, so their
    parity says whether the text after it is inside one), and whether it ends in an unfinished escape."""
    quotes = 0
    for byte in piece:
        if escaped:
            escaped = False
        elif byte == 0x5C:  # a backslash escapes the next character
            escaped = True
        elif byte == 0x22:
            quotes += 1
    return quotes, escaped


def json_string_end(piece: bytes) -> bool:
    """Whether ``piece``, written inside a JSON string, ends it and begins nothing more: one unescaped double
    quote (not ``", "``, which opens the next string) and no comma after it (not ``",``, which commits the answer
    to one more item). The way out of a string past the soft limit: with any closing quote, SmolLM2 took ``", "``
    every time, and open objects grew by one more pair to the cap."""
    return json_quote_count(piece)[0] == 1 and b"," not in piece[piece.rfind(b'"') + 1:]


def json_closer(piece: bytes) -> bool:
    """Whether ``piece`` starts by closing a JSON array or object (outside a string): the way out of one."""
    return piece[:1] in (b"]", b"}")


def token_mask(n_vocab: int, tokens: list[int]) -> np.ndarray:
    """``tokens`` as a packed bitmask: 32 tokens per int32 word, lowest bit first (llguidance's layout)."""
    bits = np.zeros((n_vocab + 31) // 32 * 32, dtype=np.uint64)
    bits[tokens] = 1
    words = (bits.reshape(-1, 32) << np.arange(32, dtype=np.uint64)).sum(axis=1)
    return words.astype(np.uint32).view(np.int32)
