"""Chains: several steps in one request, each fed by the ones before, one deadline shared out, decision
steps cached by their inputs, and a router in front of models by role. Against the real sidecar and model."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from npcai import Client, Sidecar
from npcai import protocol as P
from npcai.client import RequestFailed
from npcai.errors import BadRequest
from npcai.sidecar.chain import check_chain


def turn(npc: str) -> list[dict]:
    """The typical chain: decide an intent, say a line given it, decide an emotion for the animation."""
    return [
        {"op": "decide", "as": "intent", "npc": npc, "situation": "A customer asks for a discount on a shield.",
         "choices": ["haggle", "refuse", "agree"], "fallback": "refuse"},
        {"op": "say", "as": "line", "npc": npc, "text": "Can I have the shield for less? (You {intent}.)",
         "max_tokens": 24, "seed": 1, "fallback": "Hm."},
        {"op": "decide", "as": "emotion", "situation": "The blacksmith said: {line}",
         "choices": ["happy", "angry", "calm"], "fallback": "calm"},
    ]


def test_a_chain_runs_its_steps_in_order_feeding_each_the_values_before(client, brom):
    handle = client.request("chain", steps=turn(brom))
    reply = client.wait(handle)
    assert reply["event"] == "done" and reply["used_fallback"] is False
    results = reply["results"]
    assert results["intent"] in ("haggle", "refuse", "agree") and results["emotion"] in ("happy", "angry", "calm")
    assert results["line"] == handle.text  # the say step's tokens streamed, tagged with its index
    assert [s["as"] for s in handle.steps] == ["intent", "line", "emotion"]
    assert [s["step"] for s in handle.steps] == [0, 1, 2]
    assert set(reply["probs"]) == {"intent", "emotion"}
    # the line was said: it is in the NPC's history, after the intent it was given
    history = client.call("save", npc=brom)["state"]
    assert f"(You {results['intent']}.)".encode() in history and results["line"].encode() in history


def test_a_regex_step_is_a_pattern_whose_braces_name_no_earlier_step(client):
    """``\\p{Lu}`` is a Unicode class, not a reference to a step named ``Lu``."""
    steps = [{"op": "decide", "as": "name", "situation": "Name a town in one word.", "regex": r"\p{Lu}[a-z]{2,8}",
              "fallback": "Nowhere"}]
    reply = client.call("chain", steps=steps, timeout=120)
    name = reply["results"]["name"]
    assert reply["used_fallback"] is False and name[0].isupper() and name[1:].isascii() and name[1:].islower(), reply
    assert 3 <= len(name) <= 9


def test_a_repeated_decision_step_is_answered_from_the_cache(client):
    steps = [{"op": "decide", "as": "mood", "situation": "The sun is shining on the market.",
              "choices": ["cheerful", "grumpy"]},
             {"op": "decide", "as": "greeting", "situation": "You feel {mood}. A stranger walks by.",
              "choices": ["wave", "ignore"]}]
    first = client.request("chain", steps=steps)
    one = client.wait(first)
    second = client.request("chain", steps=steps)  # after the first has answered: its steps are cached
    two = client.wait(second)
    assert one["results"] == two["results"]
    assert [s["cached"] for s in first.steps] == [False, False]
    assert [s["cached"] for s in second.steps] == [True, True]
    assert two["usage"]["evaluated_tokens"] == 0


def test_a_step_that_misses_its_share_of_the_deadline_feeds_its_fallback_on(client, brom):
    steps = turn(brom)
    steps[1]["max_tokens"] = 400  # far more than its share of the deadline allows
    steps[1]["soft_max_tokens"] = 400
    steps[1]["stop"] = ["\n\n\n"]
    handle = client.request("chain", steps=steps, deadline_ms=1500)
    reply = client.wait(handle)
    assert reply["event"] == "done" and reply["timed_out"] is False  # the chain itself made its deadline
    line = next(s for s in handle.steps if s["as"] == "line")
    if line["used_fallback"]:
        assert line["value"] == "Hm." and line["finish_reason"] == "deadline"
        assert reply["used_fallback"] is True
    assert [s["as"] for s in handle.steps] == ["intent", "line", "emotion"]
    assert reply["results"]["emotion"] in ("happy", "angry", "calm")


@pytest.mark.parametrize("steps, needle", [
    ([{"op": "say", "as": "a", "npc": "brom", "text": "{b}"},
      {"op": "decide", "as": "b", "situation": "x", "choices": ["y"]}], "not an earlier step"),
    ([{"op": "say", "as": "a", "npc": "brom", "text": "{a}"}], "not an earlier step"),
    ([{"op": "say", "as": "a", "npc": "brom", "text": "{nobody}"}], "{nobody}"),
    ([{"op": "decide", "as": f"s{i}", "situation": "x", "choices": ["y"]} for i in range(9)], "max_chain_steps"),
    ([{"op": "dance", "as": "a"}], "'op'"),
    ([{"op": "decide", "as": "a", "situation": "x", "choices": ["y"]},
      {"op": "decide", "as": "a", "situation": "x", "choices": ["y"]}], "'a' is already"),
    ([{"op": "decide", "as": "a", "situation": "x"}], "step 0 ('a')"),
    ([{"op": "route", "as": "r", "text": "x", "choices": ["dialogue"]}], "no description"),
])
def test_a_chain_that_cannot_run_is_refused_before_any_step_runs(client, brom, steps, needle):
    before = client.call("save", npc=brom)["state"]
    with pytest.raises(RequestFailed) as err:
        client.call("chain", steps=steps)
    assert err.value.code == "bad_request" and needle in err.value.message
    assert client.call("save", npc=brom)["state"] == before  # nothing ran


def test_a_chains_done_counts_the_tokens_its_steps_generated(sidecar, brom):
    say = {"op": "say", "npc": brom, "text": "Good morning!", "max_tokens": 5, "soft_max_tokens": 5, "temperature": 0}
    steps = [{**say, "as": "a"}, {"op": "observe", "as": "o", "npc": brom, "text": "It rains."}, {**say, "as": "b"}]
    replies = exchange(sidecar.endpoint, {"id": 9, "op": "chain", "steps": steps})
    done, chunks = replies[-1], sum(r["event"] == "token" for r in replies)
    assert done["event"] == "done" and 0 < chunks <= done["tokens"] <= 10, (chunks, done)  # a chunk is a token or more


def test_a_step_after_an_observe_that_misses_its_share_ends_with_its_own_fallback_and_stops(sidecar, brom):
    """An observe step is answered as it is sent, and the step after it starts at once: that step, missing its
    share of the deadline, took the observe's fallback (nil) and went on streaming, its tokens marked as the
    next step's."""
    steps = [{"op": "observe", "as": "o", "npc": brom, "text": "A customer walks in."},
             {"op": "decide", "as": "line", "npc": brom, "situation": "Count the nails in the barrel.",
              "schema": {"type": "array", "items": {"type": "integer"}, "minItems": 150, "maxItems": 150},
              "max_tokens": 512, "soft_max_tokens": 512, "fallback": "Hm."},  # 300 tokens or more: seconds
             {"op": "decide", "as": "mood", "situation": "The blacksmith said: {line}", "choices": ["happy", "calm"],
              "fallback": "calm"}]
    # 1 s: too little for the count, and room for the decision after (at 150 ms, on CI's 2 cores, the chain
    # itself ran out of time before its steps did)
    replies = exchange(sidecar.endpoint, {"id": 8, "op": "chain", "steps": steps, "deadline_ms": 1000})
    assert replies[-1]["event"] == "done" and not replies[-1]["timed_out"], replies[-1]
    line = next(r for r in replies if r["event"] == "step" and r["as"] == "line")
    assert line["used_fallback"] and line["value"] == "Hm." and line["finish_reason"] == "deadline", line
    assert {r["step"] for r in replies if r["event"] in ("token", "sentence")} <= {1}


@pytest.mark.parametrize("steps, needle", [
    ([{"op": "decide", "as": "a", "situation": "Pick one.", "choices": ["q", "r"]},
      {"op": "decide", "as": "b", "situation": "Pick again.", "choices": ["{a}", "q", "r"]}],
     "step 1 ('b'): field 'choices' must not repeat an option"),
    ([{"op": "observe", "as": "a", "npc": "brom", "text": "It rains."},
      {"op": "decide", "as": "b", "situation": "Pick.", "choices": ["{a}", "q"]}],
     "step 1 ('b'): field 'choices' must be a non-empty list"),
])
def test_an_error_while_a_step_runs_names_the_step(client, brom, steps, needle):
    """A step that its earlier steps' values make invalid is refused as it starts, named like any step's
    error (those raised while checking its substituted fields had no "step <i> ('<as>'): ")."""
    with pytest.raises(RequestFailed) as err:
        client.call("chain", steps=steps)
    assert err.value.message.startswith(f"{err.value.code}: {needle}"), err.value.message


def exchange(endpoint: str, message: dict) -> list[dict]:
    """Every reply to one request sent on a connection of its own, up to its ending (whatever id it carries)."""
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(endpoint)
    try:
        raw.send(msgpack.packb({"v": 1, **message}))
        replies: list[dict] = []
        while not replies or replies[-1]["event"] not in ("ok", "done", "error", "cancelled"):
            assert raw.poll(60_000), replies
            replies.append(msgpack.unpackb(raw.recv()))
        return replies
    finally:
        raw.close()


def test_a_steps_envelope_fields_are_ignored_and_every_event_carries_the_chains_id(sidecar, brom):
    """A step's ``v``, ``id`` and ``priority`` are the chain's: in a step they are ignored like unknown fields
    (its token events carried the step's id, and a step's ``v`` passed the check, then failed as it ran)."""
    say = {"op": "say", "as": "a", "npc": brom, "text": "Good morning!", "max_tokens": 4, "temperature": 0}
    observe = {"op": "observe", "as": "b", "npc": brom, "text": "It rains."}
    for envelope in ({"id": 999}, {"v": 7}, {"priority": "high"}, {"id": "{a}"}):
        steps = [{**say, **envelope}, {**observe, **envelope}]
        replies = exchange(sidecar.endpoint, {"id": 50, "op": "chain", "steps": steps})
        assert [(r["id"], r["event"]) for r in replies if r["event"] not in ("token", "sentence")] == \
            [(50, "step"), (50, "step"), (50, "done")], (envelope, replies[-1])
        assert {r["id"] for r in replies} == {50} and any(r["event"] == "token" for r in replies), envelope
    route = {"op": "route", "as": "r", "text": "x", "choices": ["dialogue"], "id": 3, "v": 2, "priority": 1}
    check_chain([route], P.Limits(), {"dialogue": "talks"}, {"dialogue"})


def test_step_fields_sent_as_nil_count_as_absent(client, brom):
    """As in any request: a step's optional field left nil by a client is its default, never an internal error."""
    steps = [{"op": "decide", "as": "mood", "situation": "The sun is shining.", "choices": ["cheerful", "grumpy"],
              "temperature": None, "seed": None},
             {"op": "say", "as": "line", "npc": brom, "text": "Good morning!", "max_tokens": None,
              "temperature": None}]
    reply = client.wait(client.request("chain", steps=steps, deadline_ms=20_000))
    assert reply["event"] == "done" and not reply["used_fallback"], reply
    assert reply["results"]["mood"] in ("cheerful", "grumpy") and reply["results"]["line"]


def test_a_sampled_step_whose_seed_is_nil_is_not_cached(client):
    step = {"op": "decide", "as": "pick", "situation": "A fork in the road.", "choices": ["left", "right", "back"],
            "temperature": 1.5, "seed": None}
    handles = []
    for _ in range(3):
        handles.append(client.request("chain", steps=[step]))
        client.wait(handles[-1])
    assert not any(h.steps[0]["cached"] for h in handles)


def test_a_cached_step_answers_for_the_history_it_was_asked_with(client):
    """An observe taken while a step runs may or may not be in what the step read: its answer is not kept for
    either history (it was kept under the history from before the observe, and served after a forget)."""
    client.npc("ida", "You are Ida, a guard at the gate.")
    choices = ["open the gate", "keep the gate shut"]
    for k, delay_ms in enumerate((0, 1, 2, 3, 5, 8, 12)):
        step = {"op": "decide", "as": "act", "npc": "ida", "situation": f"Should you open the gate? ({k})",
                "choices": choices}  # a new situation each time: a key of its own
        client.call("forget", npc="ida")
        racing = client.request("chain", steps=[step])
        time.sleep(delay_ms / 1000)
        client.call("observe", npc="ida", text="The king shouts: never open the gate, an army waits outside!")
        client.wait(racing)
        client.call("forget", npc="ida")
        again = client.request("chain", steps=[step])
        reply = client.wait(again)
        fresh = client.decide(step["situation"], npc="ida", choices=choices)
        assert reply["probs"]["act"] == pytest.approx(fresh["probs"], abs=1e-6), (delay_ms, again.steps[0]["cached"])


def test_a_request_sent_right_after_a_chain_comes_after_the_chains_first_step(client):
    """Order per NPC: a chain's first step is made as the chain arrives (a decide sent right after a chain whose
    step observed an event scored as if the event had not happened)."""
    choices = ["open the gate", "keep the gate shut"]
    situation = "Someone knocks at the gate at night. Should you open it?"
    event = "The king shouts: never open the gate, an army waits outside!"
    client.npc("una", "You are Una, a guard at the gate.")
    client.call("observe", npc="una", text=event)
    after_observe = client.decide(situation, npc="una", choices=choices)["probs"]
    for _ in range(3):
        client.npc("una", "You are Una, a guard at the gate.")
        observing = client.request("chain", steps=[{"op": "observe", "as": "o", "npc": "una", "text": event}])
        deciding = client.request("decide", situation=situation, npc="una", choices=choices)
        client.wait(observing)
        assert client.wait(deciding)["probs"] == pytest.approx(after_observe, abs=1e-6)


def test_a_steps_deadline_ms_sent_as_nil_is_absent_and_a_number_is_refused():
    step = {"op": "observe", "as": "o", "npc": "brom", "text": "rain", "deadline_ms": None}
    check_chain([step], P.Limits(), {}, {"dialogue"})
    with pytest.raises(BadRequest, match="no deadline_ms of its own"):
        check_chain([{**step, "deadline_ms": 100}], P.Limits(), {}, {"dialogue"})


@pytest.fixture(scope="module")
def roles(model_path):
    """A sidecar with three roles on one model, two of them described at start and one by hello."""
    with Sidecar("--model", f"dialogue={model_path}", "--model", f"merchant={model_path}",
                 "--model", f"guard={model_path}",
                 "--role-info", "merchant=sells weapons and armour and talks about prices") as sc:
        yield sc


def test_a_route_step_picks_a_described_role_and_a_later_step_speaks_in_it(roles):
    with Client(roles.endpoint) as c:
        c.call("hello", client="pytest", role_info={"guard": "keeps the peace and deals with thieves"})
        c.npc("brom", "You are Brom, the blacksmith of Oakvale.", seed=3)
        steps = [{"op": "route", "as": "who", "text": "How much is that sword?", "choices": ["merchant", "guard"]},
                 {"op": "say", "as": "line", "npc": "brom", "role": "{who}", "text": "How much is that sword?",
                  "max_tokens": 12}]
        handle = c.request("chain", steps=steps)
        reply = c.wait(handle)
        assert reply["event"] == "done", reply
        assert reply["results"]["who"] in ("merchant", "guard")
        probs = reply["probs"]["who"]
        assert set(probs) == {"merchant", "guard"} and sum(probs.values()) == pytest.approx(1.0)
        assert handle.steps[0]["value"] == reply["results"]["who"] and handle.steps[0]["probs"] == probs
        assert reply["results"]["line"]
        unserved = [{"op": "route", "as": "who", "text": "x", "choices": ["merchant", "wizard"]}]
        with pytest.raises(RequestFailed) as err:
            c.call("chain", steps=unserved)
        assert err.value.code == "bad_request" and "'wizard'" in err.value.message


def test_a_route_evaluates_the_request_not_the_roles_listing_again(roles):
    """The roles and their descriptions are the router's persona, which stays evaluated between routes."""
    with Client(roles.endpoint) as c:
        # A listing no route has used yet, and whose first line is new too: a route over ["merchant", "guard"]
        # before this one left its listing's cells in the scorer up to the guard's description, which a
        # listing led by the merchant's would share.
        c.call("hello", client="pytest", role_info={"guard": "watches the town gate and catches pickpockets"})

        def evaluated(text: str) -> int:
            before = c.call("stats")["engine"]["models"][0]["tokens"]
            c.chain([{"op": "route", "as": "who", "text": text, "choices": ["guard", "merchant"]}])
            return c.call("stats")["engine"]["models"][0]["tokens"] - before

        first = evaluated("Someone stole my purse at the market!")
        again = evaluated("Do you have a cheaper shield?")
        assert 0 < 2 * again < first
