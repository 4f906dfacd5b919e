"""Lines sent together reach the scheduler together: the engine's inbox waits a moment for the rest
of a burst of lines, and never once a request with a deadline has come (burst.py).

Driven with the engine's real inbox (a queue fed from another thread, as the socket thread feeds it);
the waits are stretched to a second so that a busy machine cannot change the outcome.
"""

import queue
import threading
import time

import pytest

from npcai import protocol as P
from npcai.sidecar import burst
from npcai.sidecar.burst import Burst


@pytest.fixture
def slow_burst(monkeypatch):
    monkeypatch.setattr(burst, "QUIET_S", 1.0)
    monkeypatch.setattr(burst, "MAX_S", 3.0)


def say(n: int) -> P.SayRequest:
    return P.SayRequest(id=n, npc=f"crowd{n}", text="Hello there.")


def put_later(inbox: queue.SimpleQueue, delay_s: float, *reqs: P.Request) -> threading.Thread:
    def run():
        for r in reqs:
            time.sleep(delay_s)
            inbox.put(r)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def take_all(b: Burst) -> list[P.Request]:
    got = []
    while True:
        try:
            got.append(b.take())
        except queue.Empty:
            return got


def test_lines_that_keep_coming_after_a_line_are_taken_in_the_same_turn(slow_burst):
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    inbox.put(say(1))
    feeder = put_later(inbox, 0.05, say(2), say(3), say(4))
    assert [r.id for r in take_all(Burst(inbox))] == [1, 2, 3, 4]
    feeder.join()


def test_without_a_line_the_inbox_is_taken_as_it_is():
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    inbox.put(P.PingRequest(id=1))
    b = Burst(inbox)
    assert b.take().id == 1
    with pytest.raises(queue.Empty):
        b.take()


def test_a_decision_ends_the_wait_at_once(slow_burst):
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    inbox.put(say(1))
    inbox.put(P.DecideRequest(id=2, situation="A wolf.", choices=["flee", "fight"]))
    b = Burst(inbox)
    assert [b.take().id, b.take().id] == [1, 2]
    late = put_later(inbox, 0.5, say(3))
    with pytest.raises(queue.Empty):
        b.take()  # a burst of lines would have waited for this one
    late.join()
    assert inbox.get_nowait().id == 3  # left for the next turn
