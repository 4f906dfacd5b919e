"""A relay: a job that does its work through requests of its own, served by the engine like any other.

An action decision is a choice decision and then an arguments decision; a chain is its steps. Rather
than a second implementation of each, a relay sends the engine ordinary requests (``spawn``), made
inside the sidecar and validated by ``protocol.parse_request`` like those from a socket, and hears
their replies instead of the client. The relay itself evaluates nothing: it has no lanes, so the
scheduler never gives it a step. Ending a relay (cancelled, or its deadline passed) cancels the
requests it still has open.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

from npcai import protocol as P
from npcai.errors import NpcaiError
from npcai.sidecar.jobs import DIALOGUE, Emit, Job

if TYPE_CHECKING:
    from npcai.model.runtime import Runtime
    from npcai.sidecar.engine import Engine
    from npcai.sidecar.npc import Npc

log = logging.getLogger("npcai")

OnReply = Callable[[dict[str, Any]], None]

_USAGE = ("prompt_tokens", "cached_tokens", "evaluated_tokens", "steps")
#: A request's envelope (docs/PROTOCOL.md, "Requests"): a sub-request's is its relay's, whatever its fields say.
ENVELOPE = frozenset({"v", "id", "op", "deadline_ms", "priority"})


class Relay(Job):
    """Bookkeeping for a job made of sub-requests; subclasses say what to ``spawn`` and when to finish."""

    urgency = DIALOGUE  # it computes nothing itself; its sub-requests carry their own urgency

    def __init__(self, req: P.Request, rt: "Runtime", emit: Emit, npc_ctx: int, engine: "Engine"):
        super().__init__(req, rt, emit, npc_ctx)
        self.engine = engine
        self._open: dict[int, P.Request] = {}

    def spawn(self, op: str, fields: dict[str, Any], on_reply: OnReply, deadline: float | None = None,
              npc: "Npc | None" = None, internal: dict[str, Any] | None = None) -> P.Request:
        """Send the engine a request of ``op`` with ``fields`` (validated as a client's would be; envelope
        fields among them are ignored); its replies go to ``on_reply`` while this relay is running. ``deadline`` is absolute (monotonic);
        ``npc``: an NPC of the relay's own that a ``decide`` without ``npc`` is made as; ``internal``: the
        request's attributes that no client can set (not on the wire), such as a decision's ``prior_weights``."""
        now = time.monotonic()
        message = {k: v for k, v in fields.items() if k not in ENVELOPE}
        message.update(v=P.VERSION, id=self.req.id, op=op, priority=self.req.priority)  # its events carry our id
        if deadline is not None:
            message["deadline_ms"] = max(0, int((deadline - now) * 1000))
        sub = P.parse_request(message, self.req.client, now)
        if internal:
            sub = dataclasses.replace(sub, **internal)

        def relay(reply: dict[str, Any]) -> None:
            # A dropped sub-request's cancel reaches the engine on its next turn, so a reply it had already
            # made may still arrive: it is not heard (a chain would take it for the step that runs now).
            live = id(sub) in self._open
            if reply["event"] in P.TERMINAL_EVENTS:
                self._open.pop(id(sub), None)
                if "usage" in reply:
                    for key in _USAGE:
                        self.usage[key] += reply["usage"].get(key, 0)
            if self.finished or not live:
                return
            try:
                on_reply(reply)
            except NpcaiError as err:
                self.finish(P.error(self.req.id, err))
            except Exception:  # a bug here must still end the request: the sub-request's job swallows it
                log.error("internal error relaying %s %s:\n%s", self.req.op, self.req.id, traceback.format_exc())
                self.finish(P.error(self.req.id, NpcaiError(f"internal error serving {self.req.op}; "
                                                            f"the sidecar keeps running")))

        self._open[id(sub)] = sub
        self.engine.dispatch(sub, relay, npc)
        return sub

    def open_requests(self) -> list[P.Request]:
        """The sub-requests this relay still waits for."""
        return list(self._open.values())

    def drop(self, sub: P.Request) -> None:
        """Stop a sub-request this relay no longer waits for; nothing more of it is heard."""
        if self._open.pop(id(sub), None) is not None:
            self.engine.cancel(sub, expired=True)

    def finish(self, reply: dict[str, Any] | None) -> None:
        for sub in list(self._open.values()):
            self.drop(sub)
        super().finish(reply)

    def tick(self, now: float) -> None:
        """Called by the engine on every turn of its loop (step deadlines, for chains)."""

    def start(self) -> None:
        raise NotImplementedError

    def advance(self) -> None:  # never given a step: it has no lanes
        pass


def ended_badly(reply: dict[str, Any]) -> bool:
    """A sub-request's reply that ends it without an answer (error or cancelled)."""
    return reply["event"] in (P.ERROR, P.CANCELLED)
