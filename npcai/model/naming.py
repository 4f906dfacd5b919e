"""An NPC introduces itself by its persona's name, not by one the model makes up.

A tiny model told "You are Brom, the blacksmith" still answers "I am Grimbold Ironfist" now and then
(SmolLM2: 3 of 7 self-introductions kept the name, docs/QUALITY.md). So while a line is drawn, right
after a self-introduction ("I am", "I'm", "my name is", "call me"…), the probability the model gives
to starting a capitalised word other than the name goes to the name instead, and the name's other
tokens follow; then the word ends ("I'm Moll", not "I'm Molla"). Lower-case continuations keep
theirs: "I am sorry", "I'm a blacksmith" are drawn as the model would draw them. Only the candidates
sampling can reach are looked at (the top 40, as ``top_k``), so nothing scans the vocabulary.
"""

from __future__ import annotations

import re

import numpy as np

#: What comes right before a name when an NPC says who it is (case-insensitive, at the end of the line so far).
_CUE = re.compile(r"(?:\bI am|\bI'm|\bI’m|\bmy name is|\bmy name's|\bthe name is|\bname's|\bcall me|\bknown as)( ?)$",
                  re.IGNORECASE)
_CANDIDATES = 40


class NameGuard:
    """Keeps one NPC's line to its persona's ``name`` where the line introduces the NPC."""

    def __init__(self, model, name: str):
        self._model = model
        self._spaced = model.tokenize(" " + name, add_bos=False, special=False)
        self._bare = model.tokenize(name, add_bos=False, special=False)
        self._saying: list[int] | None = None  # the name's tokens, while the line is saying it
        self._said = 0  # how many of them it has said
        self._ended = False  # the name was just said whole: the next token may not lengthen its word

    def adjust(self, logits: np.ndarray, text: str, temperature: float) -> None:
        """Before the line's next token is drawn from ``logits`` (changed in place), after ``text``."""
        if self._ended:
            self._ended = False
            top = np.argpartition(logits, -_CANDIDATES)[-_CANDIDATES:]
            longer = [int(t) for t in top if _continues_a_word(self._model.piece(int(t)))]
            if len(longer) < len(top):  # what is left after the name is the model's, renormalised
                logits[longer] = -np.inf
            return
        if self._saying is not None and 0 < self._said < len(self._saying):
            token = self._saying[self._said]
            kept = logits[token]
            logits[:] = -np.inf
            logits[token] = kept
            return
        self._saying = None
        cue = _CUE.search(text[-24:])
        if cue is None:
            return
        name = self._bare if cue.group(1) else self._spaced
        first = name[0]
        top = np.argpartition(logits, -_CANDIDATES)[-_CANDIDATES:]
        lead = "" if cue.group(1) else " "
        others = [int(t) for t in top if t != first and _starts_a_name(self._model.piece(int(t)), lead)]
        self._saying = name
        if not others:
            return
        moved = np.array([first, *others])
        t = max(temperature, 1e-3)  # the mass moves at the temperature the token is drawn at
        scaled = logits[moved] / t
        top_scaled = scaled.max()
        logits[first] = t * (top_scaled + np.log(np.exp(scaled - top_scaled).sum()))
        logits[others] = -np.inf

    def observe(self, token: int) -> None:
        """After the line's next token is drawn: whether it goes on saying the name."""
        if self._saying is not None and self._said < len(self._saying) and token == self._saying[self._said]:
            self._said += 1
            if self._said == len(self._saying):
                self._saying, self._said, self._ended = None, 0, True
        else:
            self._saying, self._said = None, 0


def _continues_a_word(piece: bytes) -> bool:
    """Whether a token would lengthen the word before it ("Moll|a"): it starts with a letter or digit."""
    text = piece.decode("utf-8", errors="ignore")
    return bool(text) and text[0].isalnum()


def _starts_a_name(piece: bytes, lead: str) -> bool:
    """Whether a token starts a capitalised word where a name would go ("I am| Grim|bold")."""
    text = piece.decode("utf-8", errors="ignore")
    return text.startswith(lead) and len(text) > len(lead) and text[len(lead)].isupper()
