"""The chat template a remote model's prompts are rendered with, where npcai must render them.

Choice scoring on llama.cpp and SGLang sends a prompt ending in the option's words, so npcai
renders the chat itself, with the served model's own template: the one llama-server reports in
``/props``, else the one in the GGUF file the server names as its model (llama-cpp-python's server
names the model by its path), rendered exactly as llama-cpp-python's server renders its chats
(``Jinja2ChatFormatter``), so that the engine's prefix cache sees the same bytes for say and
decide. Without a template, choices are ``bad_request``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from npcai.errors import BadRequest

Render = Callable[[list[dict[str, str]]], str]


def renderer(chat_template: str, bos: str, eos: str, model: str) -> Render | None:
    """A function that renders messages and opens the assistant's turn, or None when no template is known."""
    if not chat_template:
        chat_template, bos, eos = _from_gguf(model)
    if not chat_template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template=chat_template, eos_token=eos, bos_token=bos)
    return lambda messages: fmt(messages=messages).prompt  # add_generation_prompt is on by default


def _from_gguf(model: str) -> tuple[str, str, str]:
    path = Path(model)
    if not (path.suffix == ".gguf" and path.is_file()):
        return "", "", ""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        text = llm.metadata.get("tokenizer.chat_template", "")
        bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
        eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
        return text, bos, eos
    finally:
        llm.close()


def missing(engine: str) -> BadRequest:
    return BadRequest(f"{engine}: choices need the served model's chat template, which this server does not "
                      "report (llama-server's /props does; or serve a GGUF file npcai can read)")
