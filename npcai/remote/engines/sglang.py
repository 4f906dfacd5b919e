"""SGLang's server.

Followed: SGLang docs (docs.sglang.io, basic_usage/sampling_params.md and openai_api_completions,
as of v0.5): chat accepts ``response_format`` {"type": "json_schema", "json_schema": {name, schema}},
``ebnf`` (GBNF-style grammar) and ``regex`` as extra fields, ``top_k``, and ``stream_options``
{"include_usage"} (python/sglang/srt/entrypoints/openai/protocol.py, ``StreamOptions``); the native ``/generate``
endpoint takes ``text``, ``sampling_params`` (``max_new_tokens``, ``temperature``), and with
``return_logprob``, ``logprob_start_len: 0`` and ``return_text_in_logprobs`` answers
``meta_info.input_token_logprobs`` as [logprob, token id, text] per prompt token.

Choices go to ``/generate`` with npcai's rendered prompt, so they need the chat template (see
npcai/remote/template.py); without one a choice is ``bad_request``. Not run against SGLang here.
"""

from __future__ import annotations

from typing import Any

from npcai.remote.engines import chat_body, from_the_end, usage_in_stream

NAME = "sglang"


class Adapter:
    name = NAME
    needs_template = True

    def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any], stream: bool) -> dict:
        body = usage_in_stream(chat_body(model, messages, params, stream))
        if params.get("top_k"):
            body["top_k"] = params["top_k"]
        return body

    def guide(self, body: dict, kind: str, source: Any) -> dict:
        if kind == "schema":
            return {**body, "response_format": {"type": "json_schema",
                                                "json_schema": {"name": "decision", "schema": source}}}
        return {**body, "regex" if kind == "regex" else "ebnf": source}

    def score(self, model: str, messages: list[dict[str, str]], prompt: str, option: str) -> tuple[str, dict, bool]:
        return "/generate", {"text": prompt + option, "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
                             "return_logprob": True, "logprob_start_len": 0, "return_text_in_logprobs": True}, True

    def option_logprob(self, response: dict, option: str) -> float:
        rows = (response.get("meta_info") or {}).get("input_token_logprobs") or []
        pieces = [(str(r[2] or ""), r[0]) for r in rows if isinstance(r, (list, tuple)) and len(r) >= 3]
        return from_the_end(pieces, option, NAME)
