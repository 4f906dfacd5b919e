"""The Python client's callbacks: a game's bug in one cannot end a request twice or leave others open,
and ``poll()`` runs no more of them than its bounds allow, whoever made the endings up."""

from __future__ import annotations

import time

import pytest

from npcai import Sidecar

PERSONA = "You are Brom, the gruff village blacksmith. You answer in one or two sentences."


class GameBug(Exception):
    pass


def poll_for(client, seconds: float) -> int:
    """Poll like a game loop for ``seconds``; returns how many polls raised a GameBug."""
    raised, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            client.poll()
        except GameBug:
            raised += 1
        time.sleep(0.005)
    return raised


def test_a_raising_on_done_reaches_the_game_once_and_its_request_ends_once(client):
    calls = []

    def buggy(msg):
        calls.append(msg)
        raise GameBug("in the game's callback")

    decision = client.request("decide", situation="A thief runs.", choices=["chase", "wait"], deadline_ms=1500,
                              fallback="wait")
    decision.on_done = buggy
    raised = poll_for(client, 2.0)  # past the deadline: the client must not end it again with the fallback
    assert raised == 1 and len(calls) == 1
    assert decision.reply is calls[0] and not decision.reply.get("local")
    assert client.call("ping")["event"] == "ok"  # the client goes on


@pytest.fixture
def doomed():
    """A sidecar of its own, killed by the test, with a client that knows its process."""
    sc = Sidecar()
    try:
        with sc.client() as c:
            c.hello()
            c.npc("brom", PERSONA)
            yield sc, c
    finally:
        sc.close()


def test_a_raising_on_done_while_the_sidecar_is_lost_leaves_no_other_request_open(doomed):
    sc, c = doomed
    lines = [c.request("say", npc="brom", text=f"Tell me a long story {i}.", max_tokens=200) for i in range(4)]
    ended = []
    for line in lines:
        line.on_done = ended.append
    lines[0].on_done = lambda msg: (_ for _ in ()).throw(GameBug("in the game's callback"))
    c.poll()
    sc.kill()
    assert poll_for(c, 2.0) == 1
    assert all(line.finished and line.reply["code"] == "unavailable" for line in lines)
    assert ended == [line.reply for line in lines[1:]]  # every other callback ran, once
    assert c.wait(lines[1], timeout=1) is lines[1].reply


def test_poll_runs_at_most_max_messages_callbacks_for_endings_the_client_makes_up(doomed):
    sc, c = doomed
    heard = []
    expiring = [c.request("decide", situation="x", choices=["a", "b"], deadline_ms=0, fallback="a")
                for _ in range(40)]
    for h in expiring:
        h.on_done = heard.append
    time.sleep(0.2)
    assert c.poll(max_messages=10) == 10 and len(heard) == 10
    assert all(h.finished for h in expiring)  # ended at once; only the callbacks wait for later polls
    while len(heard) < 40:
        assert c.poll(max_messages=10) == 10

    heard.clear()
    open_ = [c.request("observe", npc="brom", text="x") for _ in range(40)]
    for h in open_:
        h.on_done = heard.append
    sc.kill()
    time.sleep(0.3)
    assert c.poll(max_messages=10) <= 10 and len(heard) <= 10
    assert all(h.finished for h in open_) and not c.alive()
    for _ in range(10):
        c.poll(max_messages=10)
    assert sorted(m["id"] for m in heard) == [h.id for h in open_]  # each callback once


@pytest.mark.parametrize("fields", [{"seed": 2**64}, {"fallback": object()}], ids=["out-of-range int", "object"])
def test_a_request_msgpack_cannot_encode_raises_and_leaves_nothing_open(client, fields):
    """It was recorded before it was packed: the error reached the game, and the request stayed open forever,
    past its deadline, with its callbacks never run."""
    with pytest.raises((OverflowError, TypeError)):
        client.request("decide", situation="A thief.", choices=["run", "fight"], deadline_ms=50, **fields)
    time.sleep(0.1)
    client.poll()
    assert client._pending == {}
    assert client.decide("A thief.", choices=["run", "fight"])["event"] == "done"
