"""Preemption: when a model step in flight gives way, the policy in one object.

A long step is stopped mid-way (llama.cpp's abort callback, polled on the engine thread) when

- every request it carries was cancelled (or expired): nobody wants its result;
- it only carries thinking ahead and any request arrived: idle work gives way to anything;
- a decision arrived (and the step holds none) that would miss its deadline if it waited for the
  rest of the step: the decision then goes first and the step is redone. A step that leaves the
  decision time enough is left to finish, since redoing it wastes its compute; so is one the
  decision could not be saved by.

Between steps, a decision whose prompt cannot be evaluated by its deadline (by the running estimate
of its cost) is shed: answered with its fallback at once, so that the game has its answer early and
the compute goes to decisions that can still make theirs.

``arrived`` is called from the socket thread; everything else runs on the engine thread.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from npcai import protocol as P
from npcai.model.kv import Lane
from npcai.model.runtime import Runtime
from npcai.sidecar.jobs import DECISION, IDLE, Job, pending_cost_s, step_cost_s

ABORT_MIN_TOKENS = 16  # steps this large take long enough to be worth aborting mid-way
DECISION_TOKENS = 20  # a typical decision prompt (a situation and the chat template), for estimates
PATIENCE_S = 0.25  # how long a decision without a deadline may wait for a dialogue step to finish
SHED_MARGIN = 0.8  # shed a decision when even 80 % of its estimated cost would overrun its deadline

Plan = list[tuple[Job, Lane, int]]


class Preemption:
    def __init__(self) -> None:
        self.urgent = False  # a decision arrived: a step of dialogue prefill may be preempted for it...
        self.urgent_by = math.inf  # ...when it must start by then (the earliest such, monotonic)
        self.anything = False  # any request arrived: a step of idle work (thinking ahead) gives way

    def arrived(self, req: P.Request) -> None:
        """A request was submitted (any thread)."""
        self.anything = True
        if isinstance(req, P.DecideRequest):
            by = req.deadline if req.deadline is not None else time.monotonic() + PATIENCE_S
            self.urgent_by = min(self.urgent_by, by)
            self.urgent = True

    def taken(self) -> None:
        """The engine is about to take every request submitted so far: none is news any more."""
        self.anything = False
        self.urgent = False
        self.urgent_by = math.inf

    def abort_check(self, rt: Runtime, plan: Plan,
                    all_cancelled: Callable[[set[int]], bool]) -> Callable[[], bool] | None:
        """The callback that stops ``plan``'s step mid-way (None: the step always runs to its end).
        ``all_cancelled(keys)`` says whether every request of the step (by ``id(req)``) was cancelled."""
        n_tokens = sum(n for _, _, n in plan)
        idle = all(job.urgency == IDLE for job, _, _ in plan)  # thinking ahead gives way to any request
        if n_tokens < ABORT_MIN_TOKENS and not idle:
            return None
        keys = {id(job.req) for job, _, _ in plan}
        preemptible = self.preemptible(plan)
        expected_end = time.monotonic() + step_cost_s(rt, plan)
        decision_s = rt.estimate_s(DECISION_TOKENS)

        def should_abort() -> bool:  # called by llama.cpp on the engine thread, mid-step
            if all_cancelled(keys) or (idle and self.anything):
                return True
            if not (preemptible and self.urgent):
                return False
            now = time.monotonic()
            slack = self.urgent_by - now - decision_s
            return 0 < slack < expected_end - now

        return should_abort

    @staticmethod
    def preemptible(plan: Plan) -> bool:
        """Whether a decision may stop this step: not when the step carries one itself."""
        return not any(job.urgency == DECISION for job, _, _ in plan)

    def gave_way(self, plan: Plan) -> bool:
        """Whether an aborted step of ``plan`` was stopped for a decision (counted as preempted)."""
        return self.preemptible(plan) and self.urgent

    @staticmethod
    def hopeless(job: Job, rt: Runtime, now: float) -> bool:
        """Whether ``job`` (already checked to be a decision on ``rt`` with a deadline, no logits yet) cannot
        finish in time and goes now, with its fallback."""
        return now + SHED_MARGIN * pending_cost_s(job) > job.req.deadline
