"""Protocol v1 decoding and validation, without a model."""

import dataclasses
import importlib.util
import re

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT

from npcai import protocol as P
from npcai.errors import BadRequest, TooLarge, UnknownOp
from npcai.protocol.checks import OPTION_ROOM_TOKENS

LIMITS = P.Limits()


def frame(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_a_valid_request_parses_with_its_envelope():
    msg = P.decode_frame(frame({"v": 1, "id": 7, "op": "say", "npc": "a", "text": "hi", "deadline_ms": 150,
                                "priority": 2, "extra_field": "ignored"}), LIMITS)
    req = P.parse_request(msg, b"client", received=10.0)
    assert (req.id, req.op, req.deadline_ms, req.priority) == (7, "say", 150, 2)
    assert req.fields == {"npc": "a", "text": "hi"}
    assert req.deadline == pytest.approx(10.15)


#: The least each op needs, and the class it parses to.
MINIMAL = {
    "hello": ({}, P.HelloRequest), "ping": ({}, P.PingRequest), "stats": ({}, P.StatsRequest),
    "shutdown": ({}, P.ShutdownRequest), "budget": ({}, P.BudgetRequest), "frame": ({"frame_ms": 16.7}, P.FrameRequest),
    "cancel": ({"target": 3}, P.CancelRequest), "npc": ({"npc": "a", "persona": "p"}, P.NpcRequest),
    "say": ({"npc": "a", "text": "hi"}, P.SayRequest), "observe": ({"npc": "a", "text": "rain"}, P.ObserveRequest),
    "decide": ({"situation": "s", "choices": ["x", "y"]}, P.DecideRequest), "forget": ({"npc": "a"}, P.ForgetRequest),
    "save": ({"npc": "a"}, P.SaveRequest), "load": ({"npc": "a", "state": b"\x00"}, P.LoadRequest),
    "act_result": ({"npc": "a", "name": "give", "result": "done"}, P.ActResultRequest),
    "chain": ({"steps": [{"op": "observe", "as": "o", "npc": "a", "text": "rain"}]}, P.ChainRequest),
}


def test_every_op_parses_to_a_frozen_request_of_its_own_type():
    assert set(MINIMAL) == set(P.OPS) == set(P.REQUEST_TYPES)
    for op, (fields, cls) in MINIMAL.items():
        req = P.parse_request({"v": 1, "id": 1, "op": op, **fields})
        assert type(req) is cls and req.op == op and req.fields == fields
        with pytest.raises(AttributeError):  # frozen (dataclasses.FrozenInstanceError is an AttributeError)
            req.id = 2
    assert P.IMMEDIATE_OPS == {"hello", "ping", "cancel", "stats", "shutdown", "budget", "frame"}


def test_a_request_names_its_fields_as_typed_attributes():
    req = P.parse_request({"v": 1, "id": 1, "op": "decide", "situation": "s", "choices": ["x", "y"], "lead": "I",
                           "temperature": 0.5, "fallback": None})
    assert (req.situation, req.choices, req.lead, req.temperature, req.schema) == ("s", ["x", "y"], "I", 0.5, None)
    assert req.has_fallback and req.fallback is None  # a nil fallback is a value too
    assert not P.parse_request({"v": 1, "id": 1, "op": "say", "npc": "a", "text": "x"}).has_fallback
    hello = P.parse_request({"v": 1, "id": 1, "op": "hello", "client": "godot"}, client=b"peer")
    assert (hello.client_name, hello.client) == ("godot", b"peer")  # the wire's 'client' is not the connection


@pytest.mark.parametrize(("fields", "error"), [
    ({"op": "say", "npc": "a", "text": "x", "temperature": 20}, BadRequest),
    ({"op": "say", "npc": "a", "text": "x" * (LIMITS.max_prompt_tokens * P.MAX_TOKEN_BYTES + 1)}, TooLarge),
    ({"op": "decide", "situation": "s", "choices": [str(i) for i in range(LIMITS.max_choices + 1)]}, TooLarge),
    ({"op": "npc", "npc": "a", "persona": "p", "examples": [{"situation": "s", "choice": "c"}] * 17}, TooLarge),
    ({"op": "budget", "share": 2}, BadRequest),
])
def test_parse_request_makes_every_check_that_needs_no_model(fields, error):
    """Ranges and sizes are refused before any model sees the request; typed_request, its first half,
    checks the types alone and leaves the rest to the request's own check."""
    message = {"v": 1, "id": 1, **fields}
    with pytest.raises(error):
        P.parse_request(message, limits=LIMITS)
    req = P.typed_request(message)
    with pytest.raises(error):
        req.check(LIMITS)


@pytest.mark.parametrize("raw", [b"\xc1", b"", b"\x81\xa1", frame({"a": 1}) + b"\x00"])
def test_bytes_that_are_not_one_msgpack_value_are_bad_requests(raw):
    with pytest.raises(BadRequest):
        P.decode_frame(raw, LIMITS)


@pytest.mark.parametrize("value", [[1, 2], "text", 5, None, b"bin"])
def test_a_frame_must_hold_a_map(value):
    with pytest.raises(BadRequest, match="map"):
        P.decode_frame(frame(value), LIMITS)


def test_deep_nesting_is_too_large_not_a_crash():
    deep = b"\x91" * 5000 + b"\xc0"  # 5000 nested arrays: beyond msgpack's own stack
    with pytest.raises(TooLarge):
        P.decode_frame(b"\x81\xa1a" + deep, LIMITS)
    nested = {"v": 1}
    for _ in range(40):
        nested = {"x": nested}
    with pytest.raises(TooLarge, match="max_depth"):
        P.decode_frame(frame(nested), LIMITS)


def _depth_by_definition(obj, level=1):
    """A message's depth as the limit means it: the longest path from the top map to a value, counting both."""
    if isinstance(obj, dict):
        return max((_depth_by_definition(v, level + 1) for v in obj.values()), default=level)
    if isinstance(obj, list):
        return max((_depth_by_definition(v, level + 1) for v in obj), default=level)
    return level


_messages = st.recursive(st.none() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=3),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner,
                                                                                     max_size=4), max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=2), _messages, max_size=4), st.integers(2, 8))  # a flat map is depth 2
def test_a_frame_is_refused_exactly_when_it_nests_deeper_than_max_depth(message, max_depth):
    limits = dataclasses.replace(LIMITS, max_depth=max_depth)
    if _depth_by_definition(message) > max_depth:
        with pytest.raises(TooLarge, match="max_depth"):
            P.decode_frame(frame(message), limits)
    else:
        assert P.decode_frame(frame(message), limits) == message


def test_oversized_frames_and_containers_are_too_large():
    with pytest.raises(TooLarge):
        P.decode_frame(b"\x00" * (LIMITS.max_frame_bytes + 1), LIMITS)
    with pytest.raises(TooLarge):
        P.decode_frame(frame({"a": list(range(LIMITS.max_container_len + 1))}), LIMITS)


EXT_VALUES = {  # every ext and timestamp encoding, as in the public msgpack-test-suite (40.ext, 50.timestamp)
    "ext8 empty": "c70006", "ext16 empty": "c8000006", "ext32 empty": "c90000000006",
    "fixext1": "d40610", "fixext2": "d5061020", "fixext4": "d60610203040", "fixext8": "d706" + "11" * 8,
    "fixext16": "d806" + "11" * 16, "ext8": "c70306010203", "ext16": "c8000306010203",
    "ext32": "c90000000306010203", "timestamp32": "d6ff00000000",
    "timestamp64": "d7ff" + "00" * 8, "timestamp96": "c70cff" + "00" * 12, "timestamp empty": "c700ff",
}


@pytest.mark.parametrize("encoded", EXT_VALUES.values(), ids=EXT_VALUES.keys())
def test_any_ext_or_timestamp_is_a_bad_request_saying_ext_types_are_not_supported(encoded):
    request = frame({"v": 1, "id": 3, "op": "decide", "situation": "?", "choices": ["a"]})  # a fixmap of 5
    with_fallback = b"\x86" + frame("fallback") + bytes.fromhex(encoded) + request[1:]
    with pytest.raises(BadRequest, match="^ext types are not supported$"):
        P.decode_frame(with_fallback, LIMITS)


@pytest.mark.parametrize("msg, match", [
    ({"id": 1, "op": "ping"}, "'v'"),
    ({"v": 2, "id": 1, "op": "ping"}, "'v'"),
    ({"v": 1, "op": "ping"}, "'id'"),
    ({"v": 1, "id": True, "op": "ping"}, "'id'"),
    ({"v": 1, "id": 1}, "'op'"),
    ({"v": 1, "id": 1, "op": "say", "npc": "a"}, "'text'"),
    ({"v": 1, "id": 1, "op": "say", "npc": "a", "text": 5}, "'text'"),
    ({"v": 1, "id": 1, "op": "say", "npc": "a", "text": "x", "max_tokens": "many"}, "'max_tokens'"),
    ({"v": 1, "id": 1, "op": "ping", "deadline_ms": -1}, "deadline_ms"),
    ({"v": 1, "id": 1, "op": "decide", "situation": "s"}, "exactly one"),
    ({"v": 1, "id": 1, "op": "decide", "situation": "s", "choices": ["a"], "grammar": "g"}, "exactly one"),
    ({"v": 1, "id": 1, "op": "decide", "situation": "s", "regex": "a+", "schema": {}}, "exactly one"),
    ({"v": 1, "id": 1, "op": "decide", "situation": "s", "regex": ""}, "'regex' must be a non-empty"),
    ({"v": 1, "id": 1, "op": "decide", "situation": "s", "regex": 5}, "'regex'"),
    ({"v": 1, "id": 1, "op": "decide", "situation": "s", "choices": []}, "non-empty"),
    ({"v": 1, "id": 1, "op": "decide", "situation": "s", "choices": ["a", "a"]}, "repeat"),
    ({"v": 1, "id": 1, "op": "load", "npc": "a", "state": "not bytes"}, "'state'"),
    ({"v": True, "id": 1, "op": "ping"}, "'v'"),  # msgpack's true is no version, though Python's equals 1
    ({"v": 1.0, "id": 1, "op": "ping"}, "'v'"),
    ({"v": 1, "id": 1, "op": "frame", "frame_ms": float("nan")}, "'frame_ms'"),
    ({"v": 1, "id": 1, "op": "frame", "frame_ms": [16.7, float("inf")]}, "'frame_ms'"),
    ({"v": 1, "id": 1, "op": "frame", "frame_ms": -3}, "'frame_ms'"),
])
def test_malformed_requests_name_the_offending_field(msg, match):
    with pytest.raises(BadRequest, match=match):
        P.parse_request(msg)


def test_an_envelope_field_sent_as_nil_counts_as_absent():
    req = P.parse_request({"v": 1, "id": 1, "op": "ping", "priority": None, "deadline_ms": None})
    assert (req.priority, req.deadline_ms) == (0, None)
    say = P.parse_request({"v": 1, "id": 2, "op": "say", "npc": "a", "text": "hi", "priority": None, "role": None,
                           "stream": None})
    assert say.priority == 0 and say.fields == {"npc": "a", "text": "hi"}
    with pytest.raises(BadRequest, match="must be an integer"):
        P.parse_request({"v": 1, "id": 1, "op": "ping", "priority": "high"})


def test_a_required_field_sent_as_nil_is_missing():
    with pytest.raises(BadRequest, match="op 'say' needs field 'text'"):
        P.parse_request({"v": 1, "id": 1, "op": "say", "npc": "a", "text": None})


def test_unknown_ops_are_their_own_error():
    with pytest.raises(UnknownOp, match="teleport"):
        P.parse_request({"v": 1, "id": 1, "op": "teleport"})


#: The characters of options (or of their descriptions) together that one decision's option tree cannot hold.
OPTIONS_OVER = OPTION_ROOM_TOKENS * P.MAX_TOKEN_BYTES + 1


@pytest.mark.parametrize("fields", [
    {"op": "decide", "situation": "s", "choices": ["a" * (OPTIONS_OVER // 2), "b" * (OPTIONS_OVER // 2 + 1)]},
    {"op": "decide", "situation": "s", "choices": ["x", "y"], "descriptions": {"y": "w" * OPTIONS_OVER}},
    {"op": "say", "npc": "a", "text": "x", "stop": ["\n", "s" * (LIMITS.max_tokens * P.MAX_TOKEN_BYTES + 1)]},
])
def test_options_and_stop_strings_too_long_for_any_model_are_refused_by_their_length(fields):
    """As a prompt text is: tokenizing them would stall every NPC's model for nothing (choices of 20,000 tokens
    each held it 9 s)."""
    with pytest.raises(TooLarge, match="characters"):
        P.parse_request({"v": 1, "id": 1, **fields}, limits=LIMITS)


def test_options_within_the_bound_are_left_for_the_model_to_measure():
    half = OPTIONS_OVER // 2
    P.parse_request({"v": 1, "id": 1, "op": "decide", "situation": "s", "choices": ["a" * half, "b" * (half - 1)]})
    P.parse_request({"v": 1, "id": 1, "op": "decide", "situation": "s", "choices": ["x" * OPTIONS_OVER, "y"],
                     "descriptions": {"x" * OPTIONS_OVER: "the long one"}})  # a described choice's own text is never scored


def test_sampling_ranges_are_checked():
    for fields in ({"max_tokens": 0}, {"max_tokens": 10_000}, {"temperature": -1}, {"top_p": 0}, {"top_k": -2}):
        with pytest.raises(BadRequest):
            P.check_sampling(fields, LIMITS)
    with pytest.raises(TooLarge):
        P.check_sampling({"choices": [str(i) for i in range(LIMITS.max_choices + 1)]}, LIMITS)


def test_a_timed_out_say_is_a_marked_done_with_the_fallback():
    req = P.parse_request({"v": 1, "id": 3, "op": "say", "npc": "a", "text": "x", "fallback": "Hm?"})
    reply = P.timed_out(req, 150.0)
    assert reply["event"] == "done" and reply["timed_out"] and reply["used_fallback"] and reply["value"] == "Hm?"
    assert reply["finish_reason"] == "deadline"


@pytest.mark.parametrize("op, fields", [("decide", MINIMAL["decide"][0]), ("chain", MINIMAL["chain"][0])])
def test_a_timed_out_reply_of_every_op_says_how_many_tokens_it_generated(op, fields):
    """``tokens`` is in every done, as a say's always was (0 here: the server counts in what a say or a chain
    already streamed)."""
    reply = P.timed_out(P.parse_request({"v": 1, "id": 3, "op": op, **fields}), 150.0)
    assert reply["tokens"] == 0


def test_the_conformance_vector_of_a_timed_out_reply_has_the_fields_a_real_one_has():
    """The bridges learn a timed-out done's shape from vectors.tsv: it must not lag behind what the sidecar sends."""
    rows = (ROOT / "engine_bridges" / "conformance" / "vectors.tsv").read_text().splitlines()
    hex_bytes = next(line.split("\t")[1] for line in rows if line.startswith("message.reply.done.timed_out\t"))
    vector = msgpack.unpackb(bytes.fromhex(hex_bytes))
    real = P.timed_out(P.parse_request({"v": 1, "id": 5, "op": "decide", **MINIMAL["decide"][0]}), 150.0)
    assert list(vector) == list(real)
    assert list(vector["timing"]) == list(real["timing"])


def test_every_error_reply_has_a_code_and_message():
    reply = P.error(None, BadRequest("nope"))
    assert reply == {"v": 1, "id": None, "event": "error", "code": "bad_request", "message": "nope"}


@pytest.mark.parametrize("rid", [None, 0, 1, 127, 128, 2**16, 2**40, -1])
@pytest.mark.parametrize("n_fields", [1, 14, 20])
def test_a_fixed_reply_encodes_exactly_like_the_reply_it_stands_for(rid, n_fields):
    fields = {f"field{k}": {"nested": [k, "x" * k]} for k in range(n_fields)}
    encoded = P.fixed_reply(P.OK, **fields)(rid)
    assert msgpack.unpackb(encoded, raw=False) == P.ok(rid, **fields)


def test_the_conformance_vectors_are_what_their_generator_writes():
    generator = ROOT / "engine_bridges" / "conformance" / "generate.py"
    spec = importlib.util.spec_from_file_location("npcai_conformance_generate", generator)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (generator.parent / "vectors.tsv").read_text(encoding="utf-8") == module.render(), \
        "run python engine_bridges/conformance/generate.py"


@pytest.mark.parametrize("fields, needle", [
    ({"npc": "a", "situation": "s", "choices": ["x"], "actions": True}, "exactly one of"),
    ({"situation": "s", "actions": ["give"]}, "needs 'npc'"),
    ({"npc": "a", "situation": "s", "actions": True, "descriptions": {"give": "g"}}, "goes with 'choices'"),
    ({"npc": "a", "situation": "s", "actions": "give"}, "true, false or a list"),
    ({"npc": "a", "situation": "s", "actions": []}, "'actions' of op 'decide' is an empty list"),
])
def test_decide_with_actions_is_checked_before_any_model(fields, needle):
    with pytest.raises(BadRequest) as err:
        P.parse_request({"v": 1, "id": 1, "op": "decide", **fields})
    assert needle in err.value.message


@pytest.mark.parametrize("field, entries, said", [
    ("actions", [{"name": "go"}, {"name": 5}], "entry 1 is {name: int}"),
    ("actions", [{"name": "go", "args": 5}], "entry 0 is {name: str, args: int}"),
    ("actions", [{"nom": "go"}], "entry 0 is {nom: str}"),
    ("actions", ["go"], "entry 0 is str"),
    ("examples", [{"situation": "s", "choice": "c"}, {"situation": "s"}], "entry 1 is {situation: str}"),
])
def test_a_list_of_maps_with_a_bad_entry_names_the_entry_and_its_shape(field, entries, said):
    """'must be a list of {name, description, args} maps, got list' left a designer to guess which of their
    sixteen actions was wrong, and how."""
    with pytest.raises(BadRequest, match=rf"^field '{field}' of op 'npc' must be .*; {re.escape(said)}$"):
        P.parse_request({"v": 1, "id": 1, "op": "npc", "npc": "a", "persona": "p", field: entries})


@pytest.mark.parametrize("invisible", ["\u200b", "\ufeff", " \u200d\u00a0 ", "\u2060"])
def test_an_option_of_only_invisible_characters_is_refused_and_punctuation_is_an_option(invisible):
    """A zero-width space or a byte-order mark alone was accepted and scored as an option nobody can read."""
    with pytest.raises(BadRequest, match="something visible"):
        P.parse_request({"v": 1, "id": 1, "op": "decide", "situation": "s", "choices": ["run", invisible]})
    said = P.parse_request({"v": 1, "id": 1, "op": "decide", "situation": "s", "choices": ["run", "...", "!!!"]})
    assert said.choices == ["run", "...", "!!!"]  # saying nothing, or shouting, is something a game may offer


def test_actions_of_an_npc_must_be_name_description_args_maps():
    ok = P.parse_request({"v": 1, "id": 1, "op": "npc", "npc": "a", "persona": "p",
                          "actions": [{"name": "give", "description": "give it", "args": {"type": "object"}}]})
    assert ok.actions[0]["name"] == "give"
    with pytest.raises(BadRequest):
        P.parse_request({"v": 1, "id": 1, "op": "npc", "npc": "a", "persona": "p", "actions": [{"nom": "give"}]})
