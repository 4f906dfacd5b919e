"""End-to-end: every op against the real sidecar with the real default model."""

from __future__ import annotations

import json
import re
import time

import jsonschema
import msgpack
import pytest
import zmq

from npcai import Client, RequestFailed
from npcai.sidecar.admission import ROOM_FOR_REQUESTS
from npcai.sidecar.jobs.grammar import MAX_STRING_TOKENS


def collect(client: Client, handle, timeout: float = 60.0):
    """Wait for a request and return (its token chunks, its last reply)."""
    reply = client.wait(handle, timeout)
    return handle.chunks, reply


def test_hello_describes_the_protocol_models_and_limits(client):
    reply = client.hello("pytest")
    assert reply["protocol"] == 1 and reply["server"].startswith("npcai")
    (model,) = reply["models"]
    assert model["name"] == "smollm2-135m" and model["n_vocab"] == 49152 and model["n_ctx"] >= 1024
    assert reply["limits"]["max_frame_bytes"] > 0 and reply["limits"]["max_inflight_per_client"] > 0


def test_ping_is_answered_ok(client):
    assert client.call("ping")["event"] == "ok"


def test_defining_an_npc_caches_its_persona(client, village):
    reply = client.npc("mira", village["npcs"]["mira"]["persona"])
    assert reply["npc"] == "mira" and reply["cached_tokens"] > 20


#: Two worked examples of about 2,000 tokens each: far over the NPC's window (npc_ctx 1024).
HUGE_EXAMPLES = [{"situation": "The guard looks at the long road and thinks. " * 200, "choice": "wait"}] * 2


def test_a_refused_redefinition_leaves_the_npc_as_it_was(client, brom):
    client.say(brom, "I am the baker's son.", max_tokens=6)
    before = client.call("save", npc=brom)["state"]
    with pytest.raises(RequestFailed, match=r"^too_large: persona and \w+ need \d+ tokens; npc_ctx is 1024\b"):
        client.npc(brom, "You are Bob.", examples=HUGE_EXAMPLES)
    assert client.call("save", npc=brom)["state"] == before  # persona, examples and history
    assert client.say(brom, "Hello again!", max_tokens=4)["event"] == "done"


def test_a_refused_definition_defines_no_npc(client):
    npcs = client.call("stats")["engine"]["npcs"]
    with pytest.raises(RequestFailed, match="^too_large"):
        client.npc("ghost", "You are a ghost.", examples=HUGE_EXAMPLES)
    with pytest.raises(RequestFailed, match="^unknown_npc"):
        client.say("ghost", "Boo?")
    assert client.call("stats")["engine"]["npcs"] == npcs  # no max_npcs place taken


def _roads(k: int) -> str:
    return "You are Tom. " + "The road is long. " * k


def _tokens_needed(client, k: int) -> int:
    """What the sidecar says a persona of ``k`` roads needs, refusing it."""
    with pytest.raises(RequestFailed, match=rf"^too_large: persona and examples need \d+ tokens; npc_ctx is 1024, "
                                            rf"and {ROOM_FOR_REQUESTS} of it is kept for the conversation$") as refused:
        client.npc("tom", _roads(k))
    return int(re.search(r"need (\d+) tokens", str(refused.value)).group(1))


def test_a_persona_that_leaves_no_room_for_a_line_is_refused_and_one_that_leaves_it_answers(client):
    """A persona filling its window all but a few tokens was accepted, and every request to the NPC then failed
    too_large: a definition must leave room for a short exchange and a default line."""
    full, fuller = _tokens_needed(client, 190), _tokens_needed(client, 195)
    assert 1024 - ROOM_FOR_REQUESTS < full < fuller <= 1024  # it fits the window, not the window and a line
    per_road = (fuller - full) / 5
    k = int(190 - (full - (1024 - ROOM_FOR_REQUESTS)) / per_road)  # the most roads that leave the room
    client.npc("tom", _roads(k))
    assert client.say("tom", "Hi there!")["event"] == "done"
    assert client.decide("A wolf comes.", npc="tom", choices=["run", "stay"])["event"] == "done"


def test_a_saved_state_too_large_for_the_window_is_refused_and_loads_nothing(client, brom):
    """A save edited (or made by a sidecar with a larger window) to hold more persona and examples than
    npc_ctx: it was installed, and every request to it then failed too_large."""
    state = msgpack.unpackb(client.call("save", npc=brom)["state"], raw=False)
    huge = msgpack.packb({**state, "examples": HUGE_EXAMPLES})
    before = client.call("save", npc=brom)["state"]
    with pytest.raises(RequestFailed, match=r"^too_large: persona and examples need \d+ tokens; npc_ctx is 1024\b"):
        client.call("load", npc=brom, state=huge)
    assert client.call("save", npc=brom)["state"] == before
    with pytest.raises(RequestFailed, match="^too_large"):
        client.call("load", npc="ghost-loaded", state=huge)
    with pytest.raises(RequestFailed, match="^unknown_npc"):
        client.say("ghost-loaded", "Boo?")


def test_say_streams_tokens_and_done_text_is_their_concatenation(client, brom):
    chunks, reply = collect(client, client.request("say", npc=brom, text="Can you fix my sword?", max_tokens=24))
    assert reply["event"] == "done" and reply["finish_reason"] in ("stop", "sentence", "length")
    assert len(chunks) >= 2 and "".join(chunks) == reply["text"] == reply["value"]
    assert 0 < reply["tokens"] <= 24
    timing = reply["timing"]
    assert 0 <= timing["queue_ms"] <= timing["ttft_ms"] <= timing["total_ms"]


def test_say_without_streaming_sends_only_done(client, brom):
    chunks, reply = collect(client, client.request("say", npc=brom, text="Hello.", max_tokens=8, stream=False))
    assert chunks == [] and reply["event"] == "done" and reply["text"]


def test_say_stops_at_max_tokens(client, brom):
    reply = client.say(brom, "Tell me a long story about your forge.", max_tokens=5, temperature=0)
    assert reply["finish_reason"] == "length" and reply["tokens"] == 5


def test_say_stops_before_a_stop_string_and_never_streams_it(client, brom):
    handle = client.request("say", npc=brom, text="Tell me about swords.", max_tokens=60, temperature=0, stop=[" "])
    chunks, reply = collect(client, handle)
    assert reply["finish_reason"] == "stop" and " " not in reply["text"] and "".join(chunks) == reply["text"]


def test_a_seed_makes_replies_reproducible_at_temperature_above_zero(client, village):
    persona = village["npcs"]["grik"]["persona"]
    lines = []
    for _ in range(2):
        client.npc("grik-seeded", persona, seed=1234)
        lines.append(client.say("grik-seeded", "Let me cross the bridge.", temperature=1.0, max_tokens=16)["text"])
    assert lines[0] == lines[1] and lines[0]


def test_history_is_kept_and_forget_clears_it_but_keeps_the_persona(client, brom):
    client.say(brom, "My name is Aldric.", max_tokens=8)
    client.say(brom, "What is my name?", max_tokens=8)
    state = msgpack.unpackb(client.call("save", npc=brom)["state"])
    assert [m[0] for m in state["messages"]] == ["user", "assistant", "user", "assistant"]
    assert state["messages"][0][1] == "My name is Aldric."
    client.call("forget", npc=brom)
    state = msgpack.unpackb(client.call("save", npc=brom)["state"])
    assert state["messages"] == [] and state["persona"].startswith("You are Brom")


def test_history_gives_way_when_the_npc_context_fills(client, village):
    client.npc("chatty", village["npcs"]["mira"]["persona"])
    long_line = "Tell me everything about the market, the herbs, the weather and the people here. " * 12
    for _ in range(8):  # ~8 x 200 prompt tokens overflow the 1024-token NPC window
        client.say("chatty", long_line, max_tokens=4)
    state = msgpack.unpackb(client.call("save", npc="chatty")["state"])
    assert 0 < len(state["messages"]) < 16 and state["messages"][0][0] == "user"


@pytest.mark.parametrize("temperature", [0.0, 0.8, 2.0])
def test_decide_returns_one_of_the_choices_at_any_temperature(client, village, temperature):
    d = village["decisions"][0]
    client.npc(d["npc"], village["npcs"][d["npc"]]["persona"])
    for seed in range(4):
        reply = client.decide(d["situation"], npc=d["npc"], choices=d["choices"], temperature=temperature, seed=seed)
        assert reply["value"] in d["choices"] and reply["used_fallback"] is False
        assert set(reply["probs"]) == set(d["choices"])
        assert sum(reply["probs"].values()) == pytest.approx(1.0)


def test_choices_that_share_a_prefix_are_scored_as_whole_options(client):
    reply = client.decide("Pick a word.", choices=["go", "go home", "golf"])
    assert reply["value"] in ("go", "go home", "golf") and sum(reply["probs"].values()) == pytest.approx(1.0)


NESTED_SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"enum": ["arrest", "follow", "raise_alarm", "ignore"]},
        "target": {"type": "object",
                   "properties": {"who": {"enum": ["stranger", "player"]}, "distance": {"type": "integer",
                                                                                     "minimum": 0, "maximum": 50}},
                   "required": ["who", "distance"], "additionalProperties": False},
        "allies": {"type": "array", "items": {"enum": ["guard", "dog", "villager"]}, "maxItems": 3},
        "say": {"type": "string", "maxLength": 40},
    },
    "required": ["action", "target", "allies", "say"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.8])
def test_decide_with_a_nested_schema_always_validates(client, village, temperature):
    client.npc("captain", village["npcs"]["captain"]["persona"])
    for seed in range(3):
        reply = client.decide("A hooded stranger climbs the granary wall at night.", npc="captain",
                              schema=NESTED_SCHEMA, temperature=temperature, seed=seed, max_tokens=200)
        assert reply["finish_reason"] == "stop" and reply["used_fallback"] is False
        jsonschema.validate(reply["value"], NESTED_SCHEMA)
        assert reply["forced_tokens"] > 0  # keys and punctuation are appended without sampling


def test_a_oneof_answer_valid_under_two_branches_is_the_fallback_never_passed_as_valid(client):
    """oneOf is compiled as anyOf: "sword" matches both branches here, which oneOf forbids. The answer is
    checked against the schema as sent, so it falls back (finish_reason error) instead of passing as valid."""
    schema = {"oneOf": [{"enum": ["bow", "sword"]}, {"enum": ["sword", "axe"]}]}
    reasons = []
    for seed in range(8):
        reply = client.decide("You grab your trusty sword. Which weapon do you hold?", schema=schema,
                              temperature=1.5, seed=seed, fallback="bow")
        if not reply["used_fallback"]:
            jsonschema.validate(reply["value"], schema)
        reasons.append(reply["finish_reason"])
    assert "error" in reasons, reasons  # "sword" was drawn, and refused


def test_decide_with_each_scenario_schema_validates(client, village):
    for d in village["decisions"]:
        if "schema" in d:
            client.npc(d["npc"], village["npcs"][d["npc"]]["persona"])
            reply = client.decide(d["situation"], npc=d["npc"], schema=d["schema"], temperature=0.7, seed=3)
            jsonschema.validate(reply["value"], d["schema"])


ACTION = re.compile(r"(attack|flee|follow|guard|trade|talk|give (gold|potion|sword|shield|map) to|wait)"
                    r"( (player|stranger|guard|merchant|nobody))?")
EMOTE = re.compile(r"\[(happy|sad|angry|afraid|surprised|disgusted|neutral|smug):[1-5]\]")


def test_an_open_ended_json_string_ends_once_it_runs_long(client):
    """A string its schema leaves open (maxLength 1024, as in a JSONSchemaBench schema) ends where it
    may after MAX_STRING_TOKENS tokens: SmolLM2 otherwise writes ".2052.2053.2054..." up to the cap."""
    schema = {"anyOf": [{"type": "string", "maxLength": 1024}, {"type": "boolean"}, {"type": "number"},
                        {"type": "null"}]}
    reply = client.decide("Fill in an example record for this game's data.", schema=schema, max_tokens=512,
                          temperature=0.0)
    assert reply["finish_reason"] == "stop" and not reply["used_fallback"], reply
    assert isinstance(reply["value"], str) and reply["tokens"] <= MAX_STRING_TOKENS + 2, reply

TALLY = {"type": "array", "items": {"type": "integer"}, "maxItems": 60}


def test_past_its_soft_limit_a_json_answer_closes_where_its_schema_lets_it(client):
    """A long list the schema allows (SmolLM2 counts on: 1, 2, 3, …) runs to the cap when written freely;
    past ``soft_max_tokens`` (default half of max_tokens) the list closes at the first place the schema
    allows, so the answer is complete and valid within the cap."""
    situation = "Count the arrows in each quiver of the armoury."
    free = client.decide(situation, schema=TALLY, max_tokens=48, soft_max_tokens=48, temperature=0.0)
    assert free["finish_reason"] == "length", free  # without the way out: the cap
    reply = client.decide(situation, schema=TALLY, max_tokens=48, temperature=0.0)
    assert reply["finish_reason"] == "stop" and not reply["used_fallback"], reply
    assert reply["tokens"] <= 48 and len(reply["value"]) >= 1, reply
    jsonschema.validate(reply["value"], TALLY)


def _keys_as_written(text: str) -> list[list[str]]:
    """Each object's keys in the order the text writes them, repeats kept (json.loads keeps only the last)."""
    objects: list[list[str]] = []
    json.loads(text, object_pairs_hook=lambda pairs: objects.append([k for k, _ in pairs]) or dict(pairs))
    return objects


@pytest.mark.parametrize("schema", [
    {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 5, "maxProperties": 6},
    {"type": "object", "properties": {"stock": {"type": "object", "patternProperties": {"^[a-z]+$": {"type": "integer"}},
                                                "minProperties": 5}}, "required": ["stock"]},
])
def test_no_key_is_written_twice_in_one_object(client, schema):
    """SmolLM2 wrote {"description": 123456, "location": 1, "name": 123, "age": 25, "description": 12, …}: read
    as JSON, 4 properties against minProperties 5, answered as valid. The grammar cannot rule a repeat out;
    the tokens that would close a key as one its object has are taken out of the mask."""
    for seed in range(3):
        reply = client.decide("A merchant asks you to describe the thief you saw.", schema=schema, max_tokens=200,
                              temperature=0.8, seed=seed)
        assert not reply["used_fallback"], reply
        assert all(len(keys) == len(set(keys)) for keys in _keys_as_written(reply["text"])), reply["text"]
        jsonschema.validate(reply["value"], schema)


FORCED_TAIL = {"type": "object", "required": ["a", "the_second_field_name"], "properties": {
    "a": {"enum": ["yes", "no"]}, "the_second_field_name": {"const": "constant value here"}}}


@pytest.mark.parametrize("constraint", [{"schema": FORCED_TAIL}, {"regex": r"The answer is (yes|no)\."},
                                        {"grammar": 'root ::= "The answer is " ("yes" | "no") "."'}])
def test_max_tokens_counts_the_forced_tokens_wherever_they_fall(client, constraint):
    """A forced run that follows the last sampled token is cut at the cap too: a reply's tokens never
    exceed max_tokens (with 4 and FORCED_TAIL the whole forced tail was appended: 19 tokens). Every reply
    says how many tokens were forced, a fallback's too; a complete answer at the cap stands."""
    answered = 0
    for max_tokens in range(1, 25):
        reply = client.decide("Is the gate open?", max_tokens=max_tokens, fallback="FB", **constraint)
        assert reply["tokens"] <= max_tokens and 0 <= reply["forced_tokens"] <= reply["tokens"], (max_tokens, reply)
        if reply["used_fallback"]:
            assert reply["value"] == "FB" and reply["finish_reason"] == "length", reply
        else:
            answered += 1
            assert reply["finish_reason"] in ("stop", "length"), reply  # length: complete just at the cap
            if "schema" in constraint:
                jsonschema.validate(reply["value"], FORCED_TAIL)
            else:
                assert reply["value"] in ("The answer is yes.", "The answer is no."), reply
    assert answered > 0  # the larger caps leave room for the whole answer


def test_an_answer_forced_whole_or_whose_forced_start_fills_max_tokens_evaluates_nothing(client):
    schema = {"const": "hello world this is long"}
    whole = client.decide("Say hello.", schema=schema, max_tokens=64, fallback="FB")
    assert not whole["used_fallback"] and whole["value"] == "hello world this is long", whole
    assert whole["forced_tokens"] == whole["tokens"] > 2
    capped = client.decide("Say hello.", schema=schema, max_tokens=2, fallback="FB")
    assert capped["used_fallback"] and capped["finish_reason"] == "length" and capped["tokens"] == 2, capped
    for reply in (whole, capped):
        assert reply["usage"]["prompt_tokens"] == reply["usage"]["evaluated_tokens"] == reply["usage"]["steps"] == 0
    assert capped["forced_tokens"] == 2  # cut at the cap, but forced all the same (it said 0)


def test_forced_tokens_cut_at_the_cap_are_counted_as_forced(client):
    """The tokens of a forced run that max_tokens cuts were appended but left out of forced_tokens (19 tokens
    with one sampled reported 14 forced)."""
    for max_tokens in range(2, 24):
        reply = client.decide("Is the gate open?", schema=FORCED_TAIL, max_tokens=max_tokens, fallback="FB")
        sampled = reply["usage"]["steps"]  # one token sampled a step; FORCED_TAIL's end is forced, no end token
        assert reply["forced_tokens"] == reply["tokens"] - sampled, (max_tokens, reply)


def test_an_answer_the_cap_ended_says_length_even_when_it_stands(client):
    """"[a-z ]+" cut at 5 tokens is a complete answer, kept; but the cap ended it, not the model, and a game
    must be able to tell (it said stop)."""
    cut = client.decide("Report what you saw.", regex="[a-z ]+", max_tokens=5, fallback="FB")
    assert not cut["used_fallback"] and cut["tokens"] == 5 and cut["finish_reason"] == "length", cut
    ended = client.decide("Is the gate open?", regex=r"The answer is (yes|no)\.", max_tokens=64, fallback="FB")
    assert not ended["used_fallback"] and ended["finish_reason"] == "stop", ended


def test_a_pattern_string_makes_room_for_the_part_its_pattern_needs(client):
    """"^pkg:.+@.+" cannot end until an "@" is written, which SmolLM2 puts off to the cap; bounded to
    MAX_STRING_LENGTH past the pattern's shortest match, the grammar makes it write one in time."""
    schema = {"type": "object", "required": ["source"], "properties": {
        "source": {"type": "string", "pattern": "^pkg:[a-z]+/.+@.+"}}}
    reply = client.decide("Fill in an example record for this game's data.", schema=schema, max_tokens=128,
                          temperature=0.0)
    assert reply["finish_reason"] == "stop" and not reply["used_fallback"], reply
    jsonschema.validate(reply["value"], schema)


@pytest.mark.parametrize("grammar, pattern", [("action", ACTION), ("emote.gbnf", EMOTE)])
def test_decide_with_a_shipped_grammar_matches_it_under_sampling(client, grammar, pattern):
    for seed in range(4):
        reply = client.decide("The player insults your mother.", grammar=grammar, temperature=1.2, seed=seed)
        assert pattern.fullmatch(reply["value"]) and reply["value"] == reply["text"]


def test_decide_with_inline_gbnf(client):
    reply = client.decide("How many arrows are left?", grammar='root ::= [0-9] [0-9]? " arrows"', temperature=0.5)
    assert re.fullmatch(r"[0-9][0-9]? arrows", reply["value"])


def test_decide_with_a_regex_answers_text_that_matches_it_whole_under_sampling(client):
    for seed in range(3):
        reply = client.decide("Which way did the thief run, and how many steps?", regex="(north|south) [0-9]{1,2}",
                              temperature=1.0, seed=seed)
        assert not reply["used_fallback"] and reply["value"] == reply["text"], reply
        assert re.fullmatch("(north|south) [0-9]{1,2}", reply["value"]), reply


@pytest.mark.parametrize("fields, needle", [
    ({"regex": "(north"}, "regex does not compile: unclosed group"),
    ({"regex": "north", "schema": {"type": "string"}}, "exactly one of"),
], ids=["bad regex", "regex and schema"])
def test_a_bad_regex_or_a_regex_beside_a_schema_is_a_bad_request(client, fields, needle):
    with pytest.raises(RequestFailed, match="^bad_request: .*" + re.escape(needle)):
        client.decide("Which way?", **fields)


def test_a_grammar_that_does_not_exist_or_parse_is_a_bad_request(client):
    for grammar in ("no_such_grammar", "root ::= (unclosed"):
        with pytest.raises(RequestFailed, match="bad_request"):
            client.decide("x", grammar=grammar)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"const": b"x"}}},  # a bin value
    {"type": "object", "properties": {b"a": {"type": "string"}}},  # a bin key
], ids=["bin value", "bin key"])
def test_a_schema_holding_binary_is_a_bad_request_not_an_internal_error(client, schema):
    with pytest.raises(RequestFailed, match="^bad_request: schema must hold only JSON values"):
        client.decide("The guard waits.", schema=schema)


def test_a_deadline_that_passes_gives_the_marked_fallback_and_nothing_later(client, brom):
    handle = client.request("say", npc=brom, text="Tell me about the forge.", max_tokens=64, deadline_ms=30,
                            fallback="*grunts*")
    _, reply = collect(client, handle)
    assert reply["event"] == "done" and reply["timed_out"] and reply["used_fallback"]
    assert reply["value"] == "*grunts*" and reply["finish_reason"] == "deadline"
    assert reply["timing"]["total_ms"] < 30 + 250  # answered at the deadline, not after the work
    decision = client.request("decide", situation="Run?", choices=["yes", "no"], deadline_ms=0, fallback="no")
    _, reply = collect(client, decision)
    assert reply["timed_out"] and reply["value"] == "no"
    time.sleep(1.0)
    client.poll()
    assert [m for m in client.stray if m.get("id") in (handle.id, decision.id)] == []


def test_a_decision_that_cannot_make_its_deadline_gets_its_fallback_at_once(client):
    """About 900 situation tokens cannot be evaluated in 500 ms: rather than compute until the
    deadline, the sidecar answers with the fallback as soon as it starts the decision."""
    shed_before = client.call("stats")["engine"]["shed"]
    reply = client.decide("The goblin counts his coins. " * 130, choices=["yes", "no"], deadline_ms=500,
                          fallback="no")
    assert reply["timed_out"] and reply["used_fallback"] and reply["value"] == "no"
    assert reply["timing"]["total_ms"] < 500
    assert client.call("stats")["engine"]["shed"] == shed_before + 1


def test_a_deadline_that_holds_gives_the_real_answer(client):
    reply = client.decide("Run?", choices=["yes", "no"], deadline_ms=20_000, fallback="no")
    assert reply["timed_out"] is False and reply["used_fallback"] is False


def test_cancel_ends_a_stream_with_cancelled(client, brom):
    handle = client.request("say", npc=brom, text="Describe every sword you ever made.", max_tokens=200,
                            temperature=0.8)
    deadline = time.monotonic() + 30
    while len(handle.chunks) < 2 and not handle.finished and time.monotonic() < deadline:
        client.poll()
        time.sleep(0.002)
    ack = client.call("cancel", target=handle.id)
    assert ack["found"] is True
    _, reply = collect(client, handle)
    assert reply["event"] == "cancelled"
    streamed = len(handle.chunks)
    time.sleep(0.3)
    client.poll()
    assert len(handle.chunks) == streamed


def test_a_cancelled_npc_that_already_redefined_the_npc_ends_ok_not_cancelled(client, village):
    """An ``npc`` takes effect when it arrives (later requests see it): a cancel can only stop the caching of its
    prefix, so its ending says what happened, ``ok``, instead of a ``cancelled`` that did not undo anything."""
    client.npc("anna", village["npcs"]["brom"]["persona"])
    line = client.request("say", npc="anna", text="Describe every sword you ever made.", max_tokens=120,
                          soft_max_tokens=120, temperature=0.8, seed=2)
    deadline = time.monotonic() + 30
    while not line.chunks and time.monotonic() < deadline:  # the line runs: nothing else is queued
        client.poll()
    redefine = client.request("npc", npc="anna", persona="You are Anna, a baker.")  # waits behind the line
    while client.call("stats")["engine"]["queued"] < 1 and time.monotonic() < deadline:
        time.sleep(0.005)  # taken by the engine: the NPC is redefined, its prefix not yet cached
    assert not line.finished
    assert client.call("cancel", target=redefine.id)["found"] is True
    reply = client.wait(redefine)
    assert reply["event"] == "ok"
    client.wait(line)
    assert msgpack.unpackb(client.call("save", npc="anna")["state"])["persona"] == "You are Anna, a baker."


def test_cancel_of_an_unknown_request_is_ok_but_not_found(client):
    assert client.call("cancel", target=987654)["found"] is False


def test_an_immediate_op_reusing_an_open_id_is_refused_and_that_request_still_ends_once(sidecar, brom):
    """``id`` is unique among a connection's open requests, whatever the op: a ping (or cancel, stats, budget,
    frame, hello) sent with the id of a say still streaming is a bad_request, not a second ending for it."""
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(sidecar.endpoint)
    try:
        def send(op: str, **fields) -> None:
            raw.send(msgpack.packb({"v": 1, "id": 11, "op": op, **fields}))

        send("say", npc=brom, text="Tell me a long story about your forge.", max_tokens=40, temperature=0)
        for op, fields in (("ping", {}), ("stats", {}), ("budget", {}), ("frame", {"frame_ms": 16.0}),
                           ("hello", {}), ("cancel", {"target": 11})):
            send(op, **fields)
        endings = []
        while len(endings) < 7 and not (endings and endings[-1]["event"] in ("done", "cancelled")):
            assert raw.poll(60_000), endings
            reply = msgpack.unpackb(raw.recv())
            if reply["event"] in ("ok", "done", "error", "cancelled"):
                endings.append(reply)
        assert [(r["id"], r["event"], r.get("code")) for r in endings] == \
            [(11, "error", "bad_request")] * 6 + [(11, "done", None)]
        assert all("already in flight" in r["message"] for r in endings[:-1])
    finally:
        raw.close()


def test_unknown_npc_is_its_own_error(client):
    with pytest.raises(RequestFailed, match="unknown_npc"):
        client.say("nobody-here", "Hello?")


BAD_FRAMES = [
    (b"\xc1\xc1", "bad_request"),  # not msgpack
    (msgpack.packb([1, 2, 3]), "bad_request"),  # not a map
    (msgpack.packb({"v": 1, "id": 5, "op": "teleport"}), "unknown_op"),
    (msgpack.packb({"v": 1, "id": 6, "op": "say", "npc": "brom"}), "bad_request"),  # missing text
    (msgpack.packb({"v": 1, "id": 7, "op": "say", "npc": "brom", "text": 42}), "bad_request"),  # wrong type
    (msgpack.packb({"v": 9, "id": 8, "op": "ping"}), "bad_request"),  # wrong version
    (msgpack.packb({"v": 1, "id": "nine", "op": "ping"}), "bad_request"),  # id not an int
]


def test_bad_frames_get_errors_while_another_client_keeps_being_served(sidecar, brom):
    with Client(sidecar.endpoint) as talker, Client(sidecar.endpoint) as attacker:
        stream = talker.request("say", npc=brom, text="What do you sell?", max_tokens=24)
        for raw, _ in BAD_FRAMES:
            attacker.send_raw(raw)
        attacker.send_raw([b"two", b"frames"])
        codes = []
        deadline = time.monotonic() + 10
        while len(codes) < len(BAD_FRAMES) + 1 and time.monotonic() < deadline:
            attacker.poll()
            codes = [m["code"] for m in attacker.stray]
            time.sleep(0.01)
        assert codes == [code for _, code in BAD_FRAMES] + ["bad_request"]
        ids = [m["id"] for m in attacker.stray]
        assert ids[:3] == [None, None, 5] and ids[3:7] == [6, 7, 8, None]
        _, reply = collect(talker, stream)
        assert reply["event"] == "done" and reply["text"]
        assert attacker.call("ping")["event"] == "ok"


def test_a_zero_length_ext_fallback_is_refused_never_echoed(sidecar):
    """PROTOCOL.md: the sidecar never sends ext. A fallback it let through would come back in the
    timed-out done of a decide with deadline_ms 0, and every bridge would reject that reply."""
    request = msgpack.packb({"v": 1, "id": 11, "op": "decide", "situation": "?", "choices": ["a"], "deadline_ms": 0})
    with Client(sidecar.endpoint) as c:
        c.send_raw(b"\x87" + request[1:] + msgpack.packb("fallback") + bytes.fromhex("c70006"))  # ext8, 0 bytes
        deadline = time.monotonic() + 10
        while not c.stray and time.monotonic() < deadline:
            c.poll()
            time.sleep(0.01)
        assert c.stray == [{"v": 1, "id": 11, "event": "error", "code": "bad_request",
                            "message": "ext types are not supported"}]


def test_save_and_load_round_trip_restores_persona_and_history(client, brom):
    client.say(brom, "I am the baker's son.", max_tokens=6)
    saved = client.call("save", npc=brom)["state"]
    assert isinstance(saved, bytes)
    loaded = client.call("load", npc="brom-restored", state=saved)
    assert loaded["messages"] == 2
    again = msgpack.unpackb(client.call("save", npc="brom-restored")["state"])
    assert again == msgpack.unpackb(saved)
    assert client.say("brom-restored", "Do you remember me?", max_tokens=6)["event"] == "done"
    with pytest.raises(RequestFailed, match="bad_request"):
        client.call("load", npc="x", state=b"not a state")


def test_redefining_an_npc_while_it_talks_leaves_it_answering(client, village):
    persona = village["npcs"]["brom"]["persona"]
    client.npc("brom2", persona)
    talking = client.request("say", npc="brom2", text="Tell me about your forge.", max_tokens=24)
    client.npc("brom2", persona + " He has a cold today.")  # while the line above is still streaming
    collect(client, talking)
    assert client.say("brom2", "Are you well?", max_tokens=4, timeout=30)["event"] == "done"


def test_after_a_reply_the_next_turns_opening_is_evaluated_in_spare_time(client, village):
    """The reply's end of turn and the next user turn's opening are evaluated while the player
    thinks, so the next line pays for its own tokens only, as the first line after `npc` does."""
    client.npc("mira", village["npcs"]["mira"]["persona"], seed=3)
    line = "Do you have any healing herbs today?"
    first = client.say("mira", line, max_tokens=6)
    time.sleep(1.0)  # the player reads and types
    second = client.say("mira", line, max_tokens=6)
    assert second["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]
    assert second["usage"]["cached_tokens"] > first["usage"]["cached_tokens"]


def test_a_decision_reuses_an_idle_npcs_history_and_leaves_it_as_it_was(client, village):
    """A decision on an idle NPC is evaluated in the NPC's own sequence and rolled back to its
    history: the next line reuses as much, and answers the same, as if there had been no decision."""
    line, later = "Can you fix my sword?", "And how much would that cost?"
    seconds = {}
    for name, decides in (("plain", False), ("decider", True)):
        client.npc(name, village["npcs"]["brom"]["persona"], seed=5)
        first = client.say(name, line, max_tokens=6, temperature=0)
        time.sleep(1.0)  # the reply's end of turn and the next opening are evaluated meanwhile
        if decides:
            decision = client.decide("A wolf runs into the forge.", npc=name, choices=["fight", "hide"])
            assert decision["value"] in ("fight", "hide")
            before = first["usage"]
            assert decision["usage"]["cached_tokens"] >= before["cached_tokens"] + before["prompt_tokens"]
        seconds[name] = client.say(name, later, max_tokens=6, temperature=0)
    plain, decider = seconds["plain"], seconds["decider"]
    assert decider["usage"]["cached_tokens"] == plain["usage"]["cached_tokens"]
    assert decider["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert decider["text"] == plain["text"]
    state = msgpack.unpackb(client.call("save", npc="decider")["state"])
    assert not any("wolf" in text for _, text in state["messages"])


def test_observe_joins_the_history_and_a_later_decision_still_works(client, village):
    client.npc("grik", village["npcs"]["grik"]["persona"])
    assert client.call("observe", npc="grik", text="The player drew a sword.")["event"] == "ok"
    state = msgpack.unpackb(client.call("save", npc="grik")["state"])
    assert "drew a sword" in state["messages"][-1][1]
    reply = client.decide("What now?", npc="grik", choices=["attack", "flee"])
    assert reply["value"] in ("attack", "flee")


def test_concurrent_npcs_are_served_together_and_match_their_solo_answers(client, village):
    names = ["brom", "mira", "grik", "captain"]
    for n in names:
        client.npc(f"solo-{n}", village["npcs"][n]["persona"])
    solo = {n: client.say(f"solo-{n}", village["npcs"][n]["lines"][0], temperature=0, max_tokens=12)["text"]
            for n in names}
    for n in names:
        client.npc(f"solo-{n}", village["npcs"][n]["persona"])  # reset history, keep the cache
    handles = {n: client.request("say", npc=f"solo-{n}", text=village["npcs"][n]["lines"][0], temperature=0,
                                 max_tokens=12) for n in names}
    together = {n: client.wait(h)["text"] for n, h in handles.items()}
    assert together == solo


def test_stats_count_ops_and_report_latency_percentiles(client):
    client.call("ping")
    stats = client.call("stats")
    assert stats["ops"]["ping"]["count"] >= 1 and stats["ops"]["ping"]["p50_ms"] is not None
    assert stats["engine"]["models"][0]["steps"] > 0


def test_wait_for_reply_sleeps_until_an_answer_is_waiting(client):
    assert client.wait_for_reply(0.05) is False  # nothing asked, nothing comes
    handle = client.request("ping")
    assert client.wait_for_reply(10.0) is True
    client.poll()
    assert handle.finished and handle.reply["event"] == "ok"
