"""A chat rendered so that only the template's own scaffolding can make control tokens.

llama.cpp renders a chat into one string; tokenized whole with control tokens parsed, a ``<|im_end|>`` that a
player typed into a situation closed the turn like the template's own, and a forged turn read as a real one.
So each message's text goes into the template as a marker, the render is split at the markers, and the
scaffolding between them is tokenized with control tokens parsed while the texts are tokenized as plain text.
The texts never pass through llama.cpp's C strings either, which ended them at a U+0000.
"""

from __future__ import annotations

import re

from npcai.errors import ModelError
from npcai.model.native import Model

#: What llama.cpp's ``trim`` strips (C ``isspace``): templates that trim a message's text (Gemma's) do it to the
#: marker instead, so the text is trimmed here as the template would have.
_C_SPACE = " \t\n\v\f\r"
_MARK = re.compile("\ue000([0-9]+)\ue001")
_PROBE_PAD = " \n"


def _mark(i: int) -> str:
    return f"\ue000{i}\ue001"


class ChatTemplate:
    """A model's chat template, rendered as pieces: scaffolding (control tokens allowed) and texts (plain)."""

    def __init__(self, model: Model):
        self.model = model
        self._trims = self._learn_trims()
        self._scaffolding: dict[tuple[str, bool], list[int]] = {}  # a few strings per role: the template's own

    def pieces(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        """The render as (text, special) pieces: ``special`` for the template's scaffolding, not for the
        messages' texts."""
        texts = [self._as_rendered(role, content) for role, content in messages]
        render = self.model.apply_chat_template(
            [(role, _mark(i) if text else "") for i, ((role, _), text) in enumerate(zip(messages, texts))],
            add_generation_prompt)
        parts = _MARK.split(render)  # scaffolding, index, scaffolding, index, ..., scaffolding
        return [(part, True) if k % 2 == 0 else (texts[int(part)], False) for k, part in enumerate(parts)]

    def tokens(self, pieces: list[tuple[str, bool]]) -> list[int]:
        """The pieces' tokens, after the BOS the model wants."""
        out: list[int] = []
        for k, (text, special) in enumerate(pieces):
            if text or k == 0:
                out += self._scaffold(text, k == 0) if special else \
                    self.model.tokenize(text, add_bos=k == 0, special=False)
        return out

    def _scaffold(self, text: str, bos: bool) -> list[int]:
        got = self._scaffolding.get((text, bos))
        if got is None:
            got = self._scaffolding[text, bos] = self.model.tokenize(text, add_bos=bos, special=True)
        return got

    def _as_rendered(self, role: str, content: str) -> str:
        left, right = self._trims.get(role, self._trims["user"])
        content = content.lstrip(_C_SPACE) if left else content
        return content.rstrip(_C_SPACE) if right else content

    def _learn_trims(self) -> dict[str, tuple[bool, bool]]:
        """Which roles' texts the template trims, on each side: render each role's marker with spaces around it."""
        roles = ["system", "user", "assistant", "user"]
        try:
            render = self.model.apply_chat_template(
                [(role, f"{_PROBE_PAD}{_mark(i)}{_PROBE_PAD}") for i, role in enumerate(roles)], False)
        except ModelError:  # a template llama.cpp cannot apply: the model loads, and its first prompt says so
            render = ""
        trims = {}
        for i, role in enumerate(roles[:3]):
            at = render.find(_mark(i))
            if at >= 0:
                trims[role] = (not render[:at].endswith(_PROBE_PAD),
                               not render[at + len(_mark(i)):].startswith(_PROBE_PAD))
        trims.setdefault("user", (False, False))
        return trims
