"""What a dialogue line is: where a sentence ends, so a line can stop there instead of mid-word."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]*]*$")
#: Texts whose tokens end a sentence: their logits are raised once a line passes its soft limit.
SENTENCE_ENDS = (".", "!", "?", ".\"", "!\"", "?\"", "...", "…")


def ends_sentence(text: str) -> bool:
    """Whether ``text`` ends at the end of a sentence (closing quotes and brackets allowed)."""
    return bool(_SENTENCE_END.search(text.rstrip()))
