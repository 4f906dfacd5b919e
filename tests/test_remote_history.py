"""A remote say's exchange reaches its NPC's history on the engine thread (npcai/remote/history.py),
whether or not anyone still waits for it there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from npcai.remote.history import History
from npcai.sidecar.npc import Npc

TURN = [("user", "Can you fix my sword?"), ("assistant", "Aye, by sundown.")]


def test_an_exchange_lands_and_wakes_its_waiter():
    queued: list[Callable[[], None]] = []
    npc = Npc("brom", "You are Brom.")

    async def say() -> None:
        added = History(queued.append).add(npc, TURN)
        await asyncio.sleep(0)
        queued.pop()()  # the engine thread's turn
        await asyncio.wait_for(added, 1)

    asyncio.run(say())
    assert npc.messages == TURN


def test_an_exchange_whose_waiter_was_cancelled_still_lands_without_raising_on_the_engine_thread():
    """The loop may cancel the wait (the sidecar shutting down, the request's task ended) while the
    exchange is still queued: the engine thread must neither lose it nor raise."""
    queued: list[Callable[[], None]] = []
    npc = Npc("brom", "You are Brom.")

    async def say_then_cancel() -> None:
        added = History(queued.append).add(npc, TURN)
        added.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the thread-safe future behind it

    asyncio.run(say_then_cancel())
    queued.pop()()  # later, on the engine thread
    assert npc.messages == TURN
