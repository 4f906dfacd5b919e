"""The vocabulary's masks: which tokens are all digits, which hold an unescaped double quote, and which
start by closing a JSON array or object (the guards of ``penalties.forbid`` and ``penalties.prefer``).

They take every token's piece, one ctypes call a token (Gemma: 262k, 0.4 s), which on a background
thread held the GIL against the socket thread right after a start (docs/PERFORMANCE.md, section 6). So
the pieces are classified with numpy, a slice at a time, rather than token by token, and the masks are kept on
disk per model file: a later start of the same file reads 100 KB instead of scanning (about 1 ms).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from npcai.model import penalties
from npcai.model.catalog import cache_dir
from npcai.model.native import Model

#: The masks' definitions' version: files written under another are ignored (bump it when one changes).
FORMAT = 1
NAMES = ("digits", "quotes", "closers")


def masks_for(model: Model) -> dict[str, np.ndarray]:
    """``model``'s masks (packed bitmasks, ``penalties.token_mask``'s layout): from the cache when it holds
    them for this very file, else scanned and stored there; a cache that cannot be read or written is skipped."""
    try:
        key = _key(model)
    except OSError:  # the file has gone since it loaded: nothing to key a cache by
        return classify(model.all_pieces(), model.n_vocab)
    path = _cache_file(model.path)
    masks = _read(path, key)
    if masks is None:
        masks = classify(model.all_pieces(), model.n_vocab)
        _write(path, key, masks)
    return masks


def classify(pieces: list[bytes], n_vocab: int) -> dict[str, np.ndarray]:
    """The masks of tokens whose pieces are ``pieces`` (token ``i``'s at ``i``): ``bytes.isdigit``,
    ``penalties.json_quotes`` and ``penalties.json_closer``, tested with numpy a slice of pieces at a time."""
    found: dict[str, list[np.ndarray]] = {name: [np.zeros(0, dtype=np.int64)] for name in NAMES}
    for at in range(0, len(pieces), _SLICE):
        for name, tokens in zip(NAMES, _classify_slice(pieces[at:at + _SLICE])):
            found[name].append(tokens + at)
    return {name: penalties.token_mask(n_vocab, np.concatenate(found[name])) for name in NAMES}


#: Pieces classified at once. ``b"".join`` or ``np.fromiter`` over a whole vocabulary (Gemma's 262k pieces)
#: holds the GIL for 11-19 ms, and the socket thread's replies would wait as long; a slice is a 32nd of that.
_SLICE = 8192


def _classify_slice(pieces: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positions in ``pieces`` of the digits, of those holding an unescaped quote, and of the closers."""
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    text = np.frombuffer(b"".join(pieces), dtype=np.uint8)

    def per_piece(flags: np.ndarray) -> np.ndarray:  # how many flagged bytes each piece holds
        total = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
        return total[ends] - total[starts]

    some = lengths > 0
    first = np.zeros(len(pieces), dtype=np.uint8)
    first[some] = text[starts[some]]
    digits = some & (per_piece((text < ord("0")) | (text > ord("9"))) == 0)
    closers = some & ((first == ord("]")) | (first == ord("}")))
    # Few pieces hold a quote at all (Gemma: 813 of 262k an unescaped one): the escape rules run on those alone.
    quoted = [t for t in np.flatnonzero(per_piece(text == ord('"'))) if penalties.json_quotes(pieces[t])[0]]
    return np.flatnonzero(digits), np.array(quoted, dtype=np.int64), np.flatnonzero(closers)


def _cache_file(model_path: Path) -> Path:
    """One file per model file, in the user cache dir (never beside the model: a bundle's folder may be
    read-only); named by where the model is too, as a bundle's copy and a pulled one share a name."""
    where = hashlib.sha256(str(model_path.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "vocab-masks" / f"{model_path.name}-{where}.npz"


def _key(model: Model) -> np.ndarray:
    """What the cached masks must have been made from: this format, and the file by size and time of change."""
    stat = model.path.stat()
    return np.array([FORMAT, stat.st_size, stat.st_mtime_ns, model.n_vocab], dtype=np.int64)


def _read(path: Path, key: np.ndarray) -> dict[str, np.ndarray] | None:
    """The masks stored at ``path`` under ``key``; None when missing, stale or unreadable (then they are rescanned)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if not np.array_equal(stored["key"], key):
                return None
            words = (int(key[3]) + 31) // 32
            masks = {name: stored[name] for name in NAMES}
    except Exception:  # missing, truncated, not an npz, a field missing: all mean "scan again"
        return None
    if any(m.dtype != np.int32 or m.shape != (words,) for m in masks.values()):
        return None
    return masks


def _write(path: Path, key: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    """Store ``masks`` at ``path``, whole or not at all (a rename); a read-only or missing cache is no error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, key=key, **masks)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
