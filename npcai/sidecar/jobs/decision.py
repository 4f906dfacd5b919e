"""What every ``decide`` job shares: its prompt, its NPC's sequence (borrowed or forked), its ``done``."""

from __future__ import annotations

from typing import Any

import numpy as np

from npcai import protocol as P
from npcai.model.runtime import Lane
from npcai.sidecar.jobs.base import DECISION, Job, fit, take_over_idle_writer
from npcai.sidecar.npc import Npc, as_question

DECIDE_DEFAULTS = {"max_tokens": 256, "temperature": 0.0, "top_k": 0, "top_p": 1.0}


def decide_prompt(req: P.DecideRequest, situation: str | None = None) -> str:
    """The user turn of a decision: the situation, and nothing the constraint already enforces.

    Choices are not listed: they are scored directly, and listing them made the picks worse
    (SmolLM2 on the game set: 39 % against 65 %, docs/QUALITY.md). With the default lead the
    situation is asked as a question, which the lead then answers.
    """
    situation = (situation if situation is not None else req.situation).strip()
    if req.schema is not None:
        return f"{situation}\n\nAnswer in JSON."
    if req.choices is not None and req.lead is None:
        return as_question(situation)
    return situation


class Decision(Job):
    urgency = DECISION
    #: Whether the job keeps its NPC's cells resident (counted in its KV's users, so never parked) until it ends.
    pins_npc = True

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx)
        self.npc = npc
        self.temperature = float(self.param("temperature", DECIDE_DEFAULTS))
        self.rng = np.random.default_rng(req.seed) if req.seed is not None else npc.rng
        self._kv = npc.kv_for(rt)
        self._holding = self.pins_npc
        if self._holding:
            self._kv.users += 1
        self._borrowed: tuple[Lane, list[int]] | None = None  # the NPC's own lane, and what stays after

    def release_npc(self) -> None:
        if self._borrowed is not None:
            lane, keep = self._borrowed
            self._borrowed = None
            self.rt.give_back(self._kv, lane, keep)
            self.npc.writer = None
        if self._holding:
            self._holding = False
            self._kv.users -= 1

    def _start_fork(self, lead: str = "", room: int = 8) -> None:
        """Evaluate the situation after the NPC's cached prefix: in the NPC's own sequence, rolled
        back to its history afterwards, when nothing else is writing it (a fork copies a whole KV
        stream: about 8 ms for SmolLM2), else in a fork. A cold NPC's prefix stays cached."""
        target = fit(self.npc, self.rt, ("user", decide_prompt(self.req)), room, self.npc_ctx, lead)
        take_over_idle_writer(self.npc)
        if self.npc.writer is None:
            lane = self.rt.borrow(self._kv, target)
            self.npc.writer = self
            keep = self.rt.prefix_tokens(self.npc.chat())  # the history stays evaluated: it is the next line's too
            self._borrowed = (lane, keep if target[:len(keep)] == keep else [])
        else:
            lane = self._fork(self.rt.fork(self._kv, target))
        self.lanes = [self._count_prompt(lane)]

    def _done(self, value: Any, text: str, tokens: int, reason: str, *, answered: bool | None = None,
              **extra: Any) -> None:
        """End with ``value`` when the decision was answered (by default: it ended ``stop``), else the fallback;
        an answer complete just as the cap ended it is answered, and ends ``length``."""
        ok = reason == "stop" if answered is None else answered
        self.finish(P.done(self.req.id, value=value if ok else self.req.fallback, text=text, tokens=tokens,
                           finish_reason=reason, timed_out=False, used_fallback=not ok, timing=self.timing(),
                           usage=self.usage, **extra))
