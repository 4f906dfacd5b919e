"""Text a remote engine is sent stays text: a "<|im_end|>" a player typed must not end a turn there either.

Locally, each text of a prompt is tokenized as plain text and only the chat template's scaffolding makes
control tokens (npcai/model/template.py). A remote engine cannot be asked for that: llama.cpp's server,
vLLM and SGLang render the chat they are sent and tokenize the render with control tokens parsed, so a
control token's text inside a message would be one. So every text npcai sends an engine has a WORD JOINER
(U+2060, invisible) put after the "<" or "[" that opens anything shaped like a control token's text
("<|im_end|>", "<｜end▁of▁sentence｜>", "<start_of_turn>", "</s>", "[INST]", "[/INST]"): the model reads the
same visible characters, split where no control token can form. Text without such a shape is sent as it is.
"""

from __future__ import annotations

import re

JOINER = "\u2060"
#: An opening "<" or "[" followed by what control tokens' texts are made of: "|" (ChatML, Llama 3, Phi),
#: the fullwidth "｜" (DeepSeek), or a name closed at once by ">" or "]" (Gemma, Llama 2, Mistral).
_OPENER = re.compile(r"([<\[])(?=[|｜]|/?[A-Za-z_][A-Za-z0-9_.:-]*[>\]])")


def plain(text: str) -> str:
    """``text`` with no control token's text left whole in it (see the module's doc)."""
    return _OPENER.sub(r"\1" + JOINER, text)
