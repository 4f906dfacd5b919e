"""vLLM's OpenAI-compatible server.

Followed: vLLM docs v0.12 (docs/serving/openai_compatible_server.md, "Extra parameters";
docs/features/structured_outputs.md): ``structured_outputs`` {"json" | "grammar" | "regex"}
(``guided_json``, ``guided_grammar`` and ``guided_regex`` were removed in v0.12.0), ``top_k``,
``priority`` (lower is served first; needs ``vllm serve --scheduling-policy priority``),
``stream_options`` {"include_usage"} (vllm/entrypoints/openai/protocol.py, ``StreamOptions``), and for
chat ``add_generation_prompt``, ``continue_final_message`` and ``prompt_logprobs``. Servers older
than v0.10.2, which introduced ``structured_outputs`` and deprecated the old fields, get
``guided_json`` / ``guided_grammar`` / ``guided_regex`` (vLLM docs v0.6.6,
usage/structured_outputs.md); the version is what ``GET /version`` reported at
start-up, and a server that reported none gets the current fields.

Choices: a chat whose last message is the assistant's answer so far (lead + option), continued
rather than closed (``continue_final_message``), with ``prompt_logprobs: 0``: vLLM returns each
prompt token's log-probability (a map of token id to {logprob, rank, decoded_token}), and renders
the prompt with the model's own template, so npcai needs none.
"""

from __future__ import annotations

import re
from typing import Any

from npcai.remote.engines import chat_body, from_the_end, usage_in_stream

NAME = "vllm"
STRUCTURED_OUTPUTS_SINCE = (0, 10, 2)
_FIELDS = {"schema": "json", "grammar": "grammar", "regex": "regex"}  # npcai's kind -> vLLM's field


class Adapter:
    name = NAME
    needs_template = False

    def __init__(self, version: str = ""):
        """``version``: the server's, as ``GET /version`` reports it ("0.10.1.post1"); empty if unknown."""
        self.legacy = _release(version) < STRUCTURED_OUTPUTS_SINCE if version else False

    def chat(self, model: str, messages: list[dict[str, str]], params: dict[str, Any], stream: bool) -> dict:
        body = usage_in_stream(chat_body(model, messages, params, stream))
        if params.get("top_k"):
            body["top_k"] = params["top_k"]
        if params.get("priority"):
            body["priority"] = -params["priority"]  # npcai: higher first; vLLM: lower first
        return body

    def guide(self, body: dict, kind: str, source: Any) -> dict:
        field = _FIELDS[kind]
        if self.legacy:
            return {**body, f"guided_{field}": source}
        return {**body, "structured_outputs": {field: source}}

    def score(self, model: str, messages: list[dict[str, str]], prompt: str, option: str) -> tuple[str, dict, bool]:
        *head, last = messages
        answer = {"role": "assistant", "content": last["content"] + option} if last["role"] == "assistant" else None
        msgs = [*head, answer] if answer else [*messages, {"role": "assistant", "content": option.lstrip()}]
        return "/chat/completions", {"model": model, "messages": msgs, "max_tokens": 1, "temperature": 0.0,
                                     "add_generation_prompt": False, "continue_final_message": True,
                                     "prompt_logprobs": 0}, False

    def option_logprob(self, response: dict, option: str) -> float:
        pieces: list[tuple[str, float | None]] = []
        for entry in response.get("prompt_logprobs") or []:
            if not entry:
                pieces.append(("", None))
                continue
            # prompt_logprobs=0: the map holds the prompt's own token only
            best = min(entry.values(), key=lambda v: v.get("rank", 0) if isinstance(v, dict) else 0)
            pieces.append((str(best.get("decoded_token") or ""), best.get("logprob")))
        return from_the_end(pieces, option, NAME)


def _release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version ("0.10.1.post1+cu128" -> (0, 10, 1)); () when there are none."""
    match = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(n) for n in match.group(1).split(".")) if match else ()
