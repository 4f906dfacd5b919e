"""Request and response shapes of the engines that cannot run here (vLLM, SGLang), pinned from their
documented APIs, plus llama.cpp's; and the parts of remote roles that need no engine: URL parsing and
the fair share between game clients.

Docs followed (as cited in npcai/remote/engines/):
- vLLM v0.12 (and v0.6.6's usage/structured_outputs.md for the ``guided_*`` fields servers before
  v0.10.2 take): docs/serving/openai_compatible_server.md ("Extra parameters": ``top_k``, ``priority``,
  chat ``add_generation_prompt`` / ``continue_final_message`` / ``prompt_logprobs``) and
  docs/features/structured_outputs.md (``structured_outputs`` {json | grammar | regex}, which replaced
  ``guided_json`` / ``guided_grammar`` / ``guided_regex`` in v0.12.0); ``prompt_logprobs`` answers a list with one
  entry per prompt token: None for the first, else {token id: {logprob, rank, decoded_token}}.
- SGLang v0.5 (docs.sglang.io): basic_usage/sampling_params.md (``/generate`` with ``text``,
  ``sampling_params``, ``return_logprob``, ``logprob_start_len``, ``return_text_in_logprobs``;
  ``meta_info.input_token_logprobs`` rows [logprob, token id, text]) and the OpenAI API's structured
  outputs (``response_format`` json_schema, ``ebnf``, ``regex``).
- llama-cpp-python 0.3.36 llama_cpp/server/types.py (``grammar``, ``response_format`` json_object
  with ``schema``; completions ``echo`` + ``logprobs``: OpenAI's legacy shape, the first token's
  log-probability null).
"""

from __future__ import annotations

import asyncio

import pytest

from npcai.errors import BadRequest, SettingsError
from npcai.remote import spec
from npcai.remote.engines import llamacpp, sglang, vllm
from npcai.remote.fair import FairGate

MESSAGES = [{"role": "system", "content": "You are Brom."}, {"role": "user", "content": "A thief! What should you do?"}]
PARAMS = {"max_tokens": 32, "temperature": 0.7, "top_p": 0.95, "top_k": 40, "seed": 7, "stop": ["\n"], "priority": 2}
SCHEMA = {"type": "object", "properties": {"act": {"enum": ["chase", "sleep"]}}, "required": ["act"]}
GBNF = 'root ::= "chase" | "sleep"'
REGEX = "(north|south) [0-9]{1,2}"
LEAD = "The sensible thing to do is to"


# --- vLLM ------------------------------------------------------------------------------------------
def test_vllm_chat_carries_openai_sampling_top_k_and_priority_lower_first():
    body = vllm.Adapter().chat("m", MESSAGES, PARAMS, stream=True)
    assert body == {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 32, "temperature": 0.7,
                    "top_p": 0.95, "seed": 7, "stop": ["\n"], "top_k": 40, "priority": -2,
                    "stream_options": {"include_usage": True}}


def test_vllm_and_sglang_streams_ask_for_usage_and_llamacpp_streams_do_not():
    """vLLM and SGLang send a stream's usage (a last chunk, its choices empty) only when asked
    (``stream_options.include_usage``); llama-cpp-python 0.3.36's server takes no ``stream_options``."""
    for adapter in (vllm.Adapter(), sglang.Adapter()):
        assert adapter.chat("m", MESSAGES, PARAMS, stream=True)["stream_options"] == {"include_usage": True}
        assert "stream_options" not in adapter.chat("m", MESSAGES, PARAMS, stream=False)
    assert "stream_options" not in llamacpp.Adapter().chat("m", MESSAGES, PARAMS, stream=True)


def test_vllm_leaves_priority_out_when_the_request_has_none():
    assert "priority" not in vllm.Adapter().chat("m", MESSAGES, {**PARAMS, "priority": 0}, stream=False)


def test_vllm_guided_decoding_uses_structured_outputs():
    a = vllm.Adapter()
    assert a.guide({"model": "m"}, "schema", SCHEMA) == {"model": "m", "structured_outputs": {"json": SCHEMA}}
    assert a.guide({"model": "m"}, "grammar", GBNF) == {"model": "m", "structured_outputs": {"grammar": GBNF}}
    assert a.guide({"model": "m"}, "regex", REGEX) == {"model": "m", "structured_outputs": {"regex": REGEX}}


@pytest.mark.parametrize("version", ["0.10.1", "0.10.1.post1", "0.6.6+cu121", "v0.9.2"])
def test_vllm_before_0_10_2_gets_the_guided_fields_it_knows(version):
    a = vllm.Adapter(version)
    assert a.guide({"model": "m"}, "schema", SCHEMA) == {"model": "m", "guided_json": SCHEMA}
    assert a.guide({"model": "m"}, "grammar", GBNF) == {"model": "m", "guided_grammar": GBNF}
    assert a.guide({"model": "m"}, "regex", REGEX) == {"model": "m", "guided_regex": REGEX}


@pytest.mark.parametrize("version", ["0.10.2", "0.11.0", "0.12.0rc1", "1.0", ""])
def test_vllm_from_0_10_2_or_of_unknown_version_gets_structured_outputs(version):
    assert vllm.Adapter(version).guide({"model": "m"}, "schema", SCHEMA) == {"model": "m",
                                                                            "structured_outputs": {"json": SCHEMA}}


def test_vllm_scores_an_option_by_continuing_the_assistants_answer_with_prompt_logprobs():
    messages = [*MESSAGES, {"role": "assistant", "content": LEAD}]
    path, body, rooted = vllm.Adapter().score("m", messages, "", " chase him")
    assert (path, rooted) == ("/chat/completions", False)
    assert body["messages"][-1] == {"role": "assistant", "content": LEAD + " chase him"}
    assert body["messages"][:-1] == MESSAGES
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["prompt_logprobs"] == 0 and body["max_tokens"] == 1


def test_vllm_option_log_likelihood_sums_the_options_prompt_tokens():
    def entry(tid, lp, text):
        return {str(tid): {"logprob": lp, "rank": 3, "decoded_token": text}}

    response = {"choices": [{"message": {"content": "."}}],
                "prompt_logprobs": [None, entry(1, -1.0, "The"), entry(2, -0.5, " to"), entry(3, -2.0, " chase"),
                                    entry(4, -0.25, " him")]}
    assert vllm.Adapter().option_logprob(response, " chase him") == pytest.approx(-2.25)


def test_vllm_without_prompt_logprobs_is_a_bad_request_naming_the_feature():
    with pytest.raises(BadRequest, match="prompt log-probabilities"):
        vllm.Adapter().option_logprob({"choices": [{}]}, " chase him")


# --- SGLang ----------------------------------------------------------------------------------------
def test_sglang_guided_decoding_uses_response_format_json_schema_ebnf_and_regex():
    a = sglang.Adapter()
    assert a.guide({}, "schema", SCHEMA) == {"response_format": {"type": "json_schema", "json_schema": {
        "name": "decision", "schema": SCHEMA}}}
    assert a.guide({}, "grammar", GBNF) == {"ebnf": GBNF}
    assert a.guide({}, "regex", REGEX) == {"regex": REGEX}
    assert "priority" not in a.chat("m", MESSAGES, PARAMS, stream=True)


def test_sglang_scores_an_option_with_native_generate_input_logprobs():
    path, body, rooted = sglang.Adapter().score("m", MESSAGES, "<prompt>" + LEAD, " chase him")
    assert (path, rooted) == ("/generate", True)
    assert body == {"text": "<prompt>" + LEAD + " chase him", "sampling_params": {"max_new_tokens": 0,
                    "temperature": 0.0}, "return_logprob": True, "logprob_start_len": 0,
                    "return_text_in_logprobs": True}
    response = {"text": "", "meta_info": {"input_token_logprobs": [[None, 1, "<s>"], [-1.0, 5, " to"],
                                                                   [-0.75, 6, " chase"], [-0.5, 7, " him"]]}}
    assert sglang.Adapter().option_logprob(response, " chase him") == pytest.approx(-1.25)


# --- llama.cpp -------------------------------------------------------------------------------------
def test_llamacpp_guided_decoding_uses_response_format_schema_and_gbnf_grammar():
    a = llamacpp.Adapter()
    assert a.guide({}, "schema", SCHEMA) == {"response_format": {"type": "json_object", "schema": SCHEMA}}
    assert a.guide({}, "grammar", GBNF) == {"grammar": GBNF}


def test_llamacpp_regex_is_a_bad_request_naming_the_missing_feature():
    with pytest.raises(BadRequest, match="no regex constraint"):
        llamacpp.Adapter().guide({}, "regex", REGEX)


def test_llamacpp_scores_from_echoed_prompt_logprobs_leaving_out_the_generated_token():
    path, body, _ = llamacpp.Adapter().score("m", MESSAGES, "<prompt>" + LEAD, " chase him")
    assert path == "/completions" and body["echo"] is True and body["logprobs"] == 1
    assert body["prompt"] == "<prompt>" + LEAD + " chase him"
    response = {"choices": [{"logprobs": {"tokens": ["<p>", " to", " chase", " him", "."],
                                          "token_logprobs": [None, -1.0, -3.0, -0.5, -0.1]}}],
                "usage": {"completion_tokens": 1}}
    assert llamacpp.Adapter().option_logprob(response, " chase him") == pytest.approx(-3.5)


def test_a_server_that_ignores_echo_is_a_bad_request_not_a_guess():
    response = {"choices": [{"logprobs": {"tokens": ["."], "token_logprobs": [-0.1]}}],
                "usage": {"completion_tokens": 1}}
    with pytest.raises(BadRequest, match="echo"):
        llamacpp.Adapter().option_logprob(response, " chase him")


# --- --model ROLE=URL ------------------------------------------------------------------------------
def test_a_remote_url_names_its_base_model_and_engine():
    s = spec.parse("dialogue", "http://gpu-box:8000/v1#Qwen/Qwen2.5-7B-Instruct?engine=vllm")
    assert (s.model, s.engine) == ("Qwen/Qwen2.5-7B-Instruct", "vllm")
    s = spec.parse("dialogue", "https://gpu-box:8000/v1?engine=sglang#qwen")
    assert (s.base_url, s.model, s.engine, s.root) == ("https://gpu-box:8000/v1", "qwen", "sglang",
                                                       "https://gpu-box:8000")
    assert spec.parse("decision", "http://[::1]:8080").base_url == "http://[::1]:8080/v1"


@pytest.mark.parametrize("url, needle", [("gpu-box:8000/v1", "http:// or https://"),
                                         ("http://h:8000/v1?engine=tgi", "unknown engine"),
                                         ("http://h:8000/v1?model=x", "unknown URL option"),
                                         ("http://h:99999/v1", "bad --model"),
                                         ("http://k:secret@h/v1", "no credentials")])
def test_a_bad_remote_url_is_refused_in_one_line(url, needle):
    with pytest.raises(SettingsError, match=needle) as err:
        spec.parse("dialogue", url)
    assert "\n" not in str(err.value) and "secret" not in str(err.value)


# --- the fair share ----------------------------------------------------------------------------------
def test_waiting_clients_take_turns_so_a_busy_one_cannot_starve_another():
    async def run() -> list[str]:
        gate = FairGate(slots=1)
        order: list[str] = []

        async def request(client: bytes, name: str) -> None:
            await gate.acquire(client)
            order.append(name)
            await asyncio.sleep(0.001)
            gate.release()

        busy = [asyncio.create_task(request(b"busy", f"busy{i}")) for i in range(4)]
        await asyncio.sleep(0)  # the busy client queues everything first...
        quiet = asyncio.create_task(request(b"quiet", "quiet"))  # ...then one request of another client
        await asyncio.gather(*busy, quiet)
        return order

    order = asyncio.run(run())
    assert order.index("quiet") <= 2, order  # served after at most one more of the busy client's requests


def test_a_cancelled_waiter_gives_up_its_place_and_the_slot_is_not_lost():
    async def run() -> int:
        gate = FairGate(slots=1)
        await gate.acquire(b"a")
        waiter = asyncio.create_task(gate.acquire(b"b"))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        gate.release()
        await asyncio.wait_for(gate.acquire(b"c"), 1)  # the slot came back to the pool
        return gate.waiting

    assert asyncio.run(run()) == 0


def test_a_clients_token_rate_holds_its_stream_back_once_its_second_of_burst_is_spent():
    gate = FairGate(slots=4, tokens_per_s=200.0)
    assert gate.delay(b"a", 200, now=10.0) == 0  # one second's worth goes at once
    assert gate.delay(b"a", 20, now=10.0) == pytest.approx(0.1)  # the next 20 tokens wait their 0.1 s
    assert gate.delay(b"b", 200, now=10.0) == 0  # another client's rate is its own
    assert gate.delay(b"a", 20, now=11.2) == 0  # a second later the bucket has refilled


def test_no_token_rate_means_no_wait():
    assert FairGate(slots=1).delay(b"a", 10_000, now=0.0) == 0


# --- the fitted choice temperature ------------------------------------------------------------------
@pytest.mark.parametrize("served, fitted", [
    ("/srv/models/SmolLM2-135M-Instruct.Q4_1-as-Q8_0.gguf", True),  # llama.cpp servers name the file
    ("/srv/models/SmolLM2-135M-Instruct.Q4_1.gguf", True),
    ("smollm2-135m", True),  # served under the catalog name as its alias
    ("HuggingFaceTB/SmolLM2-135M-Instruct", False),  # vLLM's id: which weights is not known
    ("smol", False),
])
def test_a_served_catalog_model_gets_its_fitted_choice_temperature_any_other_the_default(served, fitted):
    from npcai.model import catalog, choices
    from npcai.remote.role import fitted_temperature

    expected = catalog.CATALOG["smollm2-135m"].choice_temperature if fitted else choices.DEFAULT_TEMPERATURE
    assert fitted_temperature(served) == expected
