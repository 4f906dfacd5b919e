"""One module per engine's request shape. Each exposes an ``Adapter`` with the same methods:

- ``chat(model, messages, params, stream)``: the chat-completions body for ``say`` and guided ``decide``;
- ``guide(body, kind, source)``: the body constrained by a JSON schema (``kind`` "schema"), GBNF
  (``kind`` "grammar") or a regex (``kind`` "regex"), with the engine's own guided-decoding fields
  (``BadRequest`` where the engine has none for the kind);
- ``score(model, messages, prompt, option)``: the request that returns the log-probabilities of a
  prompt ending in an option's words, as (path, body, where the path is rooted);
- ``option_logprob(response, option)``: the log-likelihood of the option's tokens in that response.

Where a doc is followed, its version is named in the module, and tests/test_remote_contract.py
pins the shapes.
"""

from __future__ import annotations

from typing import Any

from npcai.errors import BadRequest


def from_the_end(pieces: list[tuple[str, float | None]], option: str, engine: str) -> float:
    """Sum the log-probabilities of the last tokens of a prompt that ends in ``option``.

    ``pieces`` are (token text, its log-probability) in prompt order. Tokens are taken from the end
    until their text covers the option's (a token that straddles the lead and the option counts
    whole: the same tokens as npcai scores locally, since the option is tokenized after the lead).
    """
    total, covered = 0.0, 0
    for text, logprob in reversed(pieces):
        if covered >= len(option):
            break
        if logprob is None:
            raise BadRequest(f"{engine}: no log-probability for a token of the option; choices need "
                             "prompt log-probabilities")
        total += float(logprob)
        covered += len(text)
    if covered < len(option):
        raise BadRequest(f"{engine}: the server returned no log-probabilities for the prompt's tokens "
                         "(prompt log-probabilities / echo); choices need them")
    return total


def chat_body(model: str, messages: list[dict[str, str]], params: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The OpenAI chat request every engine here takes, before its own fields (top_k, priority)."""
    return {"model": model, "messages": messages, "stream": stream, **sampling(params)}


def usage_in_stream(body: dict[str, Any]) -> dict[str, Any]:
    """The body asking a stream for its usage (OpenAI's ``stream_options.include_usage``: a last chunk with
    ``usage`` and empty ``choices``), which vLLM and SGLang send only when asked."""
    return {**body, "stream_options": {"include_usage": True}} if body.get("stream") else body


def sampling(params: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI sampling fields every engine here reads under the same names."""
    out: dict[str, Any] = {"max_tokens": params["max_tokens"], "temperature": params["temperature"]}
    for name in ("top_p", "seed", "stop"):
        if params.get(name) is not None:
            out[name] = params[name]
    return out
