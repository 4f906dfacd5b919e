"""Jobs that extend an NPC's cached prefix: ``npc`` (define), ``observe``, and thinking ahead after a line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from npcai import protocol as P
from npcai.errors import Overloaded
from npcai.sidecar.jobs.base import BACKGROUND, IDLE, NpcWriter, fit

if TYPE_CHECKING:
    from npcai.sidecar.jobs.say import SayJob


class DefineJob(NpcWriter):
    """``npc``: evaluate the persona prefix so later lines start warm."""

    urgency = BACKGROUND

    def start(self) -> None:
        self.claim()
        target = fit(self.npc, self.rt, None, 0, self.npc_ctx)
        try:
            lane = self.rt.attach(self.npc.kv_for(self.rt), target)
        except Overloaded as busy:
            return self.overloaded(busy)
        if lane.pending:
            self.lanes.append(lane)
        else:
            self.finish(self._reply(len(target)))

    def advance(self) -> None:
        self.finish(self._reply(self.lanes[0].pos))

    def cancelled_reply(self) -> dict[str, Any] | None:
        """The NPC was (re)defined when the request arrived, and later requests already see it: a cancel only
        stops the caching of its prefix, and the ending says so (``ok``, with what was cached)."""
        return self._reply(self.lanes[0].pos if self.lanes else 0)

    def expired_reply(self) -> dict[str, Any] | None:
        """A deadline that passed after the NPC was (re)defined stops the caching alone, as a cancel does."""
        return self.cancelled_reply()

    def overloaded(self, err: Overloaded) -> None:
        """No KV sequence or cell to evaluate into now: the NPC is defined all the same (it was when the request
        arrived), with nothing cached; its first request evaluates its prefix, as after a ``load``."""
        self.finish(self._reply(0))

    def _reply(self, cached_tokens: int) -> dict[str, Any] | None:
        return P.ok(self.req.id, npc=self.npc.id, cached_tokens=cached_tokens)


class ObserveJob(DefineJob):
    """``observe``: the event is already in the history; evaluate it when steps are spare."""

    urgency = IDLE

    def _reply(self, cached_tokens: int) -> None:
        return None  # the ok went out on receipt


class PrimeJob(ObserveJob):
    """After a reply: evaluate its end of turn and the next turn's opening in spare steps, so the
    player's next line (or a decision) pays only for its own tokens. Replies to no one."""

    def __init__(self, say: "SayJob"):
        super().__init__(say.req, say.rt, lambda reply: None, say.npc_ctx, say.npc)
