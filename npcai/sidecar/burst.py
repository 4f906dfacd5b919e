"""Lines sent together start together: the engine's inbox waits a moment for the rest of a burst.

A game that makes eight NPCs answer at once sends eight ``say``s back to back, but the socket thread
hands them to the engine one by one, and the engine used to start a step with whichever had arrived
(often one or two). The others then joined in the next step, as prompt chunks beside the first
streams: every stream that had started waited through that step (about twice a stream step), and on
Gemma-270M the inter-token gap's p99 at 8 streams was 3.5-3.9x its mean (issue 18). So once the
engine has taken a line, it keeps taking requests for as long as they keep coming less than
``QUIET_S`` apart, up to ``MAX_S`` after that line. A line alone pays ``QUIET_S`` on its first token.

Only lines wait: a decision or chain taken in the same turn ends the wait at once (they have deadlines),
and so does a request taken with no line before it.
"""

from __future__ import annotations

import queue
import time

from npcai import protocol as P

QUIET_S = 0.0015  # a burst's requests come this close together (the socket thread's time per frame)
MAX_S = 0.008  # and a burst is over this long after its first line at the latest


class Burst:
    """One turn of taking the inbox: ``take`` gives the next request, waiting only inside a burst of lines."""

    def __init__(self, inbox: queue.SimpleQueue) -> None:
        self._inbox = inbox
        self._until: float | None = None  # when waiting for more of the burst stops (monotonic)
        self._urgent = False  # a request with a deadline was taken: wait no more

    def take(self) -> P.Request:
        """The next request; raises ``queue.Empty`` when the inbox is empty and the burst, if any, is over."""
        wait = self._wait_s()
        req = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
        if isinstance(req, P.SayRequest):
            if self._until is None:
                self._until = time.monotonic() + MAX_S
        elif isinstance(req, (P.DecideRequest, P.ChainRequest)):
            self._urgent = True
        return req

    def _wait_s(self) -> float:
        if self._until is None or self._urgent:
            return 0.0
        return min(QUIET_S, self._until - time.monotonic())
