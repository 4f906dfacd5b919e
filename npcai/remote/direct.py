"""The socket thread's short way to a remote role: a ``say`` or ``decide`` for a role that an engine
serves goes straight to the remote loop (role.py's ``Hub``), not through the engine thread, whenever
nothing still queued for the engine thread could change what it reads.

Why: for such a request the engine thread only looks up its NPC and role and hands it on. That costs
a thread hand-off on every request (part of the millisecond that npcai adds to a remote first token,
docs/PERFORMANCE.md), and where a local role shares the sidecar the hand-off also waits for the local
model's step in progress (tens of milliseconds), and a remote decision arriving stops that step for
nothing (preemption.py).

The rule that keeps each NPC's ops in order: a request that names an NPC and goes to the engine
thread marks the NPC with its place in the engine's inbox (``Engine.submitted``). A say or decide for
that NPC goes straight only once the engine has taken and handled every request up to the mark
(``Engine.taken``); until then it goes to the engine thread too, behind them, and is handed on from
there in order, as before. So a ``say`` sent right after the ``npc`` that defines or redefines its
NPC, or after an ``observe``, ``forget`` or ``load``, reads the NPC as those left it, and an unknown
NPC or role gets its error from the engine thread as before. A remote say's own exchange is added on
the engine thread after ``done``; the loop makes the NPC's next request wait for it (history.py).
Cancels and deadlines reach the request's task on the loop either way (``Engine.cancel`` tells the
Hub). What stays as it was: a request with no NPC is never held back (the anonymous NPC has no
history), and a remote request's fair share and quotas are the loop's and the server's, whichever
way it came.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from npcai import protocol as P
from npcai.errors import NpcaiError

if TYPE_CHECKING:
    from npcai.sidecar.engine import Engine

_MAX_MARKS = 1024  # past this many NPCs marked, those the engine has passed are forgotten


class DirectRoute:
    """Where the socket thread submits requests: straight to a remote role, or to the engine thread.
    Socket thread only."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._remote = {id(rt) for rt in engine.hub.roles.values()} if engine.hub is not None else set()
        self._marks: dict[str, int] = {}  # NPC id -> Engine.submitted when its last request went to the engine

    def submit(self, req: P.Request) -> None:
        """Hand ``req`` to a remote role's loop straight, or else to the engine thread."""
        engine = self._engine
        if not self._remote:  # no remote role: nothing to route
            return engine.submit(req)
        if self._straight(req):
            return
        engine.submit(req)
        npc = getattr(req, "npc", None)
        if npc is not None:
            self._marks[npc] = engine.submitted
            if len(self._marks) > _MAX_MARKS:
                self._marks = {n: mark for n, mark in self._marks.items() if mark > engine.taken}

    def _straight(self, req: P.Request) -> bool:
        """Serve ``req`` on the remote loop now if it may skip the engine thread (the module's rule):
        the same lookups as the engine's ``_on_say`` and ``_on_decide``."""
        is_say = isinstance(req, P.SayRequest)
        if not is_say and not isinstance(req, P.DecideRequest):
            return False
        if req.actions not in (None, False):
            return False  # a relay of sub-requests: the engine thread queues it
        engine = self._engine
        if req.npc is None:
            npc = engine.anonymous
        else:
            if self._marks.get(req.npc, 0) > engine.taken:
                return False  # the engine thread still has a request for this NPC: queue behind it
            npc = engine.npcs.get(req.npc)
            if npc is None:
                return False  # the engine thread answers with the error
        try:
            rt = engine.admission.runtime(req.op, (req.role or npc.role) if is_say else req.role)
        except NpcaiError:
            return False
        if id(rt) not in self._remote:
            return False
        emit = engine.emit
        engine.hub.submit(rt, req, npc, lambda reply: emit(req, reply), direct=True)
        return True
