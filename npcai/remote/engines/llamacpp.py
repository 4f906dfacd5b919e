"""llama.cpp's servers: llama-cpp-python's ``python -m llama_cpp.server`` (0.3.36, tested here) and
llama.cpp's own ``llama-server``.

Followed: llama-cpp-python 0.3.36 ``llama_cpp/server/types.py`` (CreateChatCompletionRequest:
``grammar``, ``response_format`` {"type": "json_object", "schema"}, ``top_k``, ``seed``;
CreateCompletionRequest: ``echo``, ``logprobs``) and llama.cpp's tools/server/README.md (OpenAI
endpoints accept ``grammar``, ``json_schema`` and ``response_format`` with a schema; ``n_probs``).

Choices: ``/v1/completions`` with ``echo: true`` and ``logprobs`` returns every prompt token's
log-probability (llama-cpp-python's server loads models with ``logits_all``). llama-server reports
probabilities of generated tokens only (``n_probs``), never of the prompt's: against it a choice is
``bad_request`` naming the missing feature, never a first-token guess. Neither server documents a
regex field (only GBNF and JSON schema), so a ``regex`` decision is ``bad_request`` too.
"""

from __future__ import annotations

from typing import Any

from npcai.errors import BadRequest
from npcai.remote.engines import chat_body, from_the_end

NAME = "llamacpp"


class Adapter:
    name = NAME
    needs_template = True  # choices send npcai's rendered prompt to /completions

    def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any], stream: bool) -> dict:
        body = chat_body(model, messages, params, stream)
        if params.get("top_k") is not None:
            body["top_k"] = params["top_k"]
        return body

    def guide(self, body: dict, kind: str, source: Any) -> dict:
        if kind == "schema":
            return {**body, "response_format": {"type": "json_object", "schema": source}}
        if kind == "regex":
            raise BadRequest(f"{NAME}: the server has no regex constraint (only GBNF 'grammar' and JSON "
                             "'schema'); decide with a grammar instead")
        return {**body, "grammar": source}

    def score(self, model: str, messages: list[dict[str, str]], prompt: str, option: str) -> tuple[str, dict, bool]:
        return "/completions", {"model": model, "prompt": prompt + option, "max_tokens": 1, "temperature": 0.0,
                                "echo": True, "logprobs": 1}, False

    def option_logprob(self, response: dict, option: str) -> float:
        choice = (response.get("choices") or [{}])[0]
        lp = choice.get("logprobs") or {}
        tokens, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
        generated = int((response.get("usage") or {}).get("completion_tokens", 0))
        pieces = list(zip(tokens, values))
        if generated and len(pieces) > generated:
            pieces = pieces[:-generated]  # echo puts the generated token after the prompt's
        return from_the_end(pieces, option, NAME)
