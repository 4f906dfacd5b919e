"""Sharing the engine between game clients (dedicated-server mode: one npcai, many players).

Requests to the engine are capped (``slots``: the connections npcai keeps to it); when all are
taken, waiting requests get the next free one client by client in turn, not in arrival order, so
a client with a hundred requests queued cannot starve one with a single request. Each client may
also be held to a rate of streamed tokens per second (a token bucket one second deep); requests
in flight per client are capped at admission by the server (``--max-inflight-per-client``).
Everything here runs on the remote loop's thread: no locks.
"""

from __future__ import annotations

import asyncio
import collections
import time


_MAX_CLIENTS = 4096


class FairGate:
    def __init__(self, slots: int, tokens_per_s: float = 0.0):
        self.slots = slots
        self._free = slots
        self._waiting: collections.OrderedDict[bytes, collections.deque[asyncio.Future]] = collections.OrderedDict()
        self.tokens_per_s = tokens_per_s
        self._tat: dict[bytes, float] = {}  # per client: the theoretical arrival time of its next token (GCRA)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    async def acquire(self, client: bytes) -> None:
        """Wait for a slot; clients with waiters are served in turn."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, collections.deque()).append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted as it was cancelled: pass the slot on
            else:
                q = self._waiting.get(client)
                if q is not None and fut in q:
                    q.remove(fut)
                    if not q:
                        del self._waiting[client]
            raise

    def release(self) -> None:
        """Give a slot back: to the next client in turn that waits, else to the pool."""
        while self._waiting:
            client, q = next(iter(self._waiting.items()))
            fut = q.popleft()
            if q:
                self._waiting.move_to_end(client)  # its next request waits for everyone else's turn
            else:
                del self._waiting[client]
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1

    async def spend(self, client: bytes, tokens: int) -> None:
        """Take ``tokens`` from the client's rate, waiting while it is over it."""
        wait = self.delay(client, tokens, time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)

    def delay(self, client: bytes, tokens: int, now: float) -> float:
        """How long ``tokens`` more must wait at ``now`` (GCRA: a bucket one second deep), and take them."""
        if self.tokens_per_s <= 0:
            return 0.0
        if len(self._tat) > _MAX_CLIENTS:  # forget clients whose bucket is full again
            self._tat = {c: t for c, t in self._tat.items() if t > now}
        tat = max(self._tat.get(client, now), now) + tokens / self.tokens_per_s
        self._tat[client] = tat
        return max(0.0, tat - now - 1.0)

    def forget(self, client: bytes) -> None:
        self._tat.pop(client, None)
