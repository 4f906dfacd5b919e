"""An NPC's history as the remote loop changes it: exchanges added on the engine thread, awaited here.

NPC state belongs to the engine thread (observe, forget, load and local jobs change it there), so a
remote ``say`` hands its exchange over (``Engine.call_soon``) rather than changing the history from
the loop's thread, and does so before its ``done`` goes out. A request that came through the engine
thread found the exchange in place, since the engine runs such calls before its next request; one
that reaches the loop straight from the socket thread (``direct.py``) passes no engine turn, so it
waits here for its NPC's exchange still on its way: whatever the game sends after seeing ``done``
reads the history with that exchange in it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable

from npcai.sidecar.npc import Npc

OnEngine = Callable[[Callable[[], None]], None]  # runs a function on the engine thread (Engine.call_soon)


class History:
    """The exchanges on their way to the engine thread, one per NPC at most (a say holds its NPC's
    turn until its exchange is in). Loop thread only, but for the call it queues."""

    def __init__(self, on_engine: OnEngine) -> None:
        self._on_engine = on_engine
        self._pending: dict[str, asyncio.Future] = {}  # NPC id -> its exchange on its way

    def add(self, npc: Npc, turn: list[tuple[str, str]]) -> asyncio.Future:
        """Queue ``turn`` onto the NPC's history, as one step on the engine thread (nothing lands
        between its messages); the future is done once it is in."""
        added: concurrent.futures.Future = concurrent.futures.Future()

        def extend() -> None:  # on the engine thread
            waited = added.set_running_or_notify_cancel()  # False: the loop stopped waiting (shut down, or gave up)
            npc.messages.extend(turn)  # in the history either way: the NPC said it
            if waited:
                added.set_result(None)  # a thread-safe future: it wakes the loop

        pending = asyncio.wrap_future(added)
        self._pending[npc.id] = pending
        pending.add_done_callback(lambda f: self._pending.pop(npc.id) if self._pending.get(npc.id) is f else None)
        self._on_engine(extend)
        return pending

    async def settled(self, npc: Npc) -> None:
        """Wait until the NPC's last exchange is in its history (at once when none is on its way)."""
        pending = self._pending.get(npc.id)
        if pending is not None:
            await asyncio.shield(pending)  # a cancelled waiter leaves the exchange on its way
