"""Actions: an NPC declares what it may do; decide and say pick one of them, with arguments valid
against its schema, by construction. Against the real sidecar and model."""

from __future__ import annotations

import jsonschema
import msgpack
import pytest

from npcai.bench.harness import until_idle
from npcai.client import RequestFailed

ITEMS = ["sword", "shield", "bread"]
ACTIONS = [
    {"name": "give_item", "description": "give the customer what they paid for",
     "args": {"type": "object", "properties": {"item": {"enum": ITEMS}, "count": {"type": "integer", "minimum": 1,
                                                                                    "maximum": 3}},
              "required": ["item", "count"]}},
    {"name": "refuse", "description": "refuse the deal"},
    {"name": "call_guard", "description": "call the guard",
     "args": {"type": "object", "properties": {"urgent": {"type": "boolean"}}, "required": ["urgent"]}},
]
SCHEMAS = {a["name"]: a.get("args", {"type": "object", "properties": {}, "additionalProperties": False})
           for a in ACTIONS}


@pytest.fixture
def smith(client, village):
    client.npc("smith", village["npcs"]["brom"]["persona"], seed=5, actions=ACTIONS)
    return "smith"


def assert_valid(action, allowed):
    assert action["name"] in allowed
    jsonschema.validate(action["args"], SCHEMAS[action["name"]])


def test_defining_an_npc_with_actions_compiles_them_and_caches_its_persona(client, village):
    reply = client.npc("smith2", village["npcs"]["brom"]["persona"], actions=ACTIONS)
    assert reply["event"] == "ok" and reply["cached_tokens"] > 0


@pytest.mark.parametrize("how", ["defined", "loaded"])
def test_an_npcs_first_action_decision_finds_its_options_prior_scored_in_spare_steps(client, village, how):
    """The options of an NPC's action decisions are known when it is defined (or loaded from a save), so
    their content-free prior is scored in spare steps then: its first action decision evaluates only its
    own prompt, as later ones do (it used to score the prior too, about 2x the time)."""
    persona = village["npcs"]["brom"]["persona"] + f" You sell only to friends ({how})."
    if how == "defined":
        client.npc("smith3", persona, seed=5, actions=ACTIONS)
    else:  # a save of another NPC, given a persona no prior was scored for
        client.npc("smith-saved", village["npcs"]["brom"]["persona"], seed=5, actions=ACTIONS)
        state = msgpack.unpackb(client.call("save", npc="smith-saved")["state"], raw=False)
        client.call("load", npc="smith3", state=msgpack.packb({**state, "persona": persona}))
    until_idle(client, 30, poll_s=0.05)  # the spare steps: nothing else is asked meanwhile
    client.say("smith3", "Good day to you.", max_tokens=16)
    # the line's end of turn is evaluated ahead in spare steps too; a decision sent at once raced that work and,
    # after other tests' NPCs, evaluated those 6 tokens itself (this test failed run after test_e2e and test_engine)
    until_idle(client, 30, poll_s=0.05)
    situation = "A customer offers you 12 gold for your best shield."
    first = client.decide(situation, npc="smith3", actions=True)
    again = client.decide(situation, npc="smith3", actions=True)
    assert first["usage"]["evaluated_tokens"] == again["usage"]["evaluated_tokens"], (first["usage"], again["usage"])
    assert first["probs"] == pytest.approx(again["probs"], abs=0.02)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decide_with_actions_gives_an_allowed_action_with_valid_args_and_probs(client, smith, temperature):
    for seed in range(3):
        reply = client.decide("A customer hands you 20 gold for a shield.", npc=smith, actions=True,
                              temperature=temperature, seed=seed)
        assert reply["used_fallback"] is False
        assert_valid(reply["value"], SCHEMAS)
        assert set(reply["probs"]) == set(SCHEMAS) and sum(reply["probs"].values()) == pytest.approx(1.0)


def test_decide_with_a_list_of_actions_chooses_among_those_only(client, smith):
    for seed in range(3):
        reply = client.decide("A customer hands you 20 gold.", npc=smith, actions=["give_item"], temperature=1.0,
                              seed=seed)
        assert reply["value"]["name"] == "give_item" and set(reply["probs"]) == {"give_item"}
        assert_valid(reply["value"], ["give_item"])
        assert reply["usage"]["steps"] == 1  # its 9 argument combinations scored in the one step
        assert reply["tokens"] >= 1  # the chosen option's, as a choice decision counts its pick


def test_arguments_too_open_to_list_are_decided_after_the_action_by_their_schema(client, village):
    note = {"name": "write_note", "description": "write a note for the customer",
            "args": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 12}},
                     "required": ["text"]}}
    client.npc("scribe", village["npcs"]["brom"]["persona"], seed=5, actions=[note, *ACTIONS[1:]])
    for seed in range(2):
        reply = client.decide("A customer asks for a receipt.", npc="scribe", actions=["write_note"],
                              temperature=1.0, seed=seed)
        assert reply["value"]["name"] == "write_note" and reply["usage"]["steps"] >= 2  # the choice, then the schema
        assert reply["tokens"] >= reply["usage"]["steps"]  # the pick's, then at least one a step for the arguments
        jsonschema.validate(reply["value"]["args"], note["args"])


def test_say_with_actions_streams_its_line_then_done_carries_an_allowed_action_or_none(client, smith):
    handle = client.request("say", npc=smith, text="Here are 20 gold. The shield, please.", actions=True, seed=4,
                            max_tokens=40)
    reply = client.wait(handle)
    assert reply["event"] == "done" and reply["used_fallback"] is False
    assert reply["text"] == handle.text == "".join(handle.sentences) and handle.chunks
    assert "action" in reply
    if reply["action"] is not None:
        assert_valid(reply["action"], SCHEMAS)
    assert set(reply["action_probs"]) == {"(none)", *SCHEMAS}


def test_say_with_a_list_of_actions_acts_among_those_only(client, smith):
    for seed in range(3):
        reply = client.say(smith, "Take my gold.", actions=["call_guard"], seed=seed, max_tokens=16)
        assert reply["action"] is None or reply["action"]["name"] == "call_guard"
        if reply["action"]:
            assert_valid(reply["action"], ["call_guard"])


def test_act_result_joins_the_history_and_survives_save_and_load(client, smith):
    client.say(smith, "A shield, please.", max_tokens=12, seed=1)
    assert client.call("act_result", npc=smith, name="give_item", result="The customer walks off with a shield.")[
        "event"] == "ok"
    state = client.call("save", npc=smith)["state"]
    saved = msgpack.unpackb(state, raw=False)
    assert saved["messages"][-1][1].endswith("The customer walks off with a shield.)")
    assert [a["name"] for a in saved["actions"]] == [a["name"] for a in ACTIONS]
    client.call("load", npc="smith-copy", state=state)
    assert client.decide("A thief runs off.", npc="smith-copy", actions=["call_guard"])["value"]["name"] == "call_guard"


@pytest.mark.parametrize("actions, needle", [
    ([{"name": "2fast"}], "'2fast'"),
    ([{"name": "wave"}, {"name": "wave"}], "'wave' is declared twice"),
    ([{"name": "trade", "args": {"type": "object", "properties": {"item": {"type": "no-such-type"}}}}], "'trade'"),
    ([{"name": "trade", "args": {"type": "string"}}], "'trade'"),
    ([{"name": f"act{i}"} for i in range(17)], "'act16'"),
    ([{"name": "_"}, {"name": "wait"}], "'_'"),  # read as words, it is none: it was refused naming 'descriptions'
    ([{"name": "wait"}, {"name": "-.-"}], "'-.-'"),
])
def test_bad_actions_are_refused_at_npc_time_naming_the_action(client, actions, needle):
    with pytest.raises(RequestFailed) as err:
        client.npc("bad", "You are Bad.", actions=actions)
    assert err.value.code == "bad_request" and needle in err.value.message


@pytest.mark.parametrize("actions, needle", [
    ([{"name": "2fast", "args": {}}], "'2fast'"),
    ([{"name": "trade", "args": {"type": "object", "properties": {"item": {"type": "no-such-type"}}}}], "'trade'"),
    ([{"name": f"act{i}", "args": {}} for i in range(17)], "'act16'"),
])
def test_a_saved_npc_with_actions_npc_would_refuse_is_refused_at_load_and_loads_nothing(client, smith, actions,
                                                                                          needle):
    """A save edited by a player (or corrupted) defined an NPC that npc refuses: 17 actions, bad names, and a
    schema that failed only later, at every decision with actions."""
    state = msgpack.unpackb(client.call("save", npc=smith)["state"], raw=False)
    edited = msgpack.packb({**state, "actions": actions})
    with pytest.raises(RequestFailed) as err:
        client.call("load", npc="smith-edited", state=edited)
    assert err.value.code in ("bad_request", "too_large") and needle in err.value.message
    with pytest.raises(RequestFailed, match="^unknown_npc"):
        client.decide("A thief runs off.", npc="smith-edited", actions=True)


def test_an_action_the_npc_does_not_declare_is_a_bad_request(client, smith):
    for op, fields in [("decide", {"situation": "Hm.", "actions": ["fly"]}), ("say", {"text": "Hm.", "actions": ["fly"]}),
                       ("act_result", {"name": "fly", "result": "It flew."})]:
        reply = client.wait(client.request(op, npc=smith, **fields))
        assert reply["event"] == "error" and reply["code"] == "bad_request" and "'fly'" in reply["message"]
    reply = client.wait(client.request("decide", situation="Hm.", actions=True))
    assert reply["code"] == "bad_request" and "needs 'npc'" in reply["message"]
