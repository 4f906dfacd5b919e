"""The Python client's callbacks: a game's bug in one cannot end a request twice or leave others open,
and ``poll()`` runs no more of them than its bounds allow, whoever made the endings up."""

from __future__ import annotations

import time



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
