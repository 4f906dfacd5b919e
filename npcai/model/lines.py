"""What a dialogue line is: where a sentence ends, so a line can stop there instead of mid-word, and so
text-to-speech and subtitles can start on a line's first sentence while the rest is still written."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]*]*$")
#: A sentence end inside a text: end marks and closing quotes or brackets, then whitespace (so "3.5",
#: "..." still being written and "Hm?!" end where the marks end).
_SENTENCE_BREAK = re.compile(r"[.!?…]+[\"'”’)\]*]*(?=\s)")
#: Texts whose tokens end a sentence: their logits are raised once a line passes its soft limit.
SENTENCE_ENDS = (".", "!", "?", ".\"", "!\"", "?\"", "...", "…")


def ends_sentence(text: str) -> bool:
    """Whether ``text`` ends at the end of a sentence (closing quotes and brackets allowed)."""
    return bool(_SENTENCE_END.search(text.rstrip()))


class StopStrings:
    """Where a growing line meets one of its stop strings, and how much of it may go out without giving away
    the start of one.

    Only the text not yet sent is searched: sent text never holds the start of a stop string (it would have
    been held back), so a token costs the stop strings times what is held back, not times the whole line.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]

    def find(self, text: str, sent: int) -> int:
        """Where the earliest stop string in ``text`` begins (at or after ``sent``), or -1."""
        found = [at for s in self.stops if (at := text.find(s, sent)) >= 0]
        return min(found, default=-1)

    def safe_end(self, text: str, sent: int) -> int:
        """How much of ``text`` can go out: all but its longest end that begins a stop string."""
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text) - sent), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return len(text) - hold


class Sentences:
    """Cuts a growing text into sentences as it grows. Each sentence is a slice of the text, the
    whitespace before it included, so the sentences joined are the text itself."""

    def __init__(self) -> None:
        self._start = 0

    def feed(self, text: str) -> list[str]:
        """The sentences of ``text`` (the whole text so far) that ended since the last call."""
        out = []
        for m in _SENTENCE_BREAK.finditer(text, self._start):
            if text[self._start:m.end()].strip():
                out.append(text[self._start:m.end()])
                self._start = m.end()
        return out

    def rest(self, text: str) -> str:
        """What follows the last sentence given out: the last sentence, once the text is complete."""
        rest, self._start = text[self._start:], len(text)
        return rest
