"""The scheduler: which work goes into the next model step.

Order: the request's ``priority`` (higher first), then earliest deadline, then
decisions before dialogue before background work, then arrival. Each step first gives
every running stream its next token (decode steps, forced runs and choice branches are
short and cheap in a batch), then fills the rest of the token budget with prompt chunks
in the same order: only the decision's while one is pending, and small ones while NPCs
are talking, so neither a decision nor a stream waits behind a long prompt. (The engine
also preempts a long dialogue step when a decision arrives: see engine.py.)
"""

from __future__ import annotations

import math
import time

from .jobs import DECISION, Job
from .runtime import Lane, Runtime

_SHORT = 16  # lanes this short are decode steps, forced runs or choice branches: never split
_CHUNK_WHILE_STREAMING = 64  # most prompt tokens in a step that also carries streams' next tokens
_STARVING_AFTER_S = 0.3  # a dialogue prompt waiting this long joins decision steps...
_STARVING_CHUNK = 16  # ...this many tokens per step, all of them together


def urgency_key(job: Job) -> tuple:
    deadline = job.req.deadline
    return (-job.req.priority, deadline if deadline is not None else math.inf, job.urgency, job.req.received)


class Scheduler:
    def __init__(self) -> None:
        self.waiting: list[Job] = []
        self.running: list[Job] = []

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, job: Job) -> None:
        self.waiting.append(job)

    def jobs(self) -> list[Job]:
        return self.waiting + self.running

    def startable(self) -> list[Job]:
        """Waiting jobs in the order they should start (each decides whether it is ready)."""
        self.waiting.sort(key=urgency_key)
        return list(self.waiting)

    def started(self, job: Job) -> None:
        self.waiting.remove(job)
        if not job.finished:
            self.running.append(job)

    def drop(self, job: Job) -> None:
        if job in self.waiting:
            self.waiting.remove(job)
        elif job in self.running:
            self.running.remove(job)

    def sweep(self) -> None:
        self.running = [j for j in self.running if not j.finished]

    def plan(self, rt: Runtime, max_tokens: int | None = None) -> list[tuple[Job, Lane, int]]:
        """(job, lane, n tokens) to evaluate on ``rt`` in its next step, at most ``max_tokens`` in all."""
        jobs = sorted((j for j in self.running if j.rt is rt and not j.finished), key=urgency_key)
        budget = min(rt.n_batch, max_tokens or rt.n_batch)
        picked: list[tuple[Job, Lane, int]] = []
        taken: set[int] = set()
        for job in jobs:  # 1) every stream's next token (and forced runs, choice branches): cheap in a batch
            for lane in job.lanes:
                n = len(lane.pending)
                if n and (n <= _SHORT or lane.all_logits) and n <= budget:
                    picked.append((job, lane, n))
                    taken.add(id(lane))
                    budget -= n
        # 2) prompt chunks. A pending decision's prompt goes alone: dialogue prompts wait for it.
        deciding = [j for j in jobs if j.urgency == DECISION and any(
            id(lane) not in taken and lane.pending for lane in j.lanes)]
        if picked and not deciding:
            budget = min(budget, _CHUNK_WHILE_STREAMING)  # keep steps short while NPCs are talking
        now = time.monotonic()
        # Under a stream of decisions, a prompt that has waited too long still gets small chunks.
        starving = [j for j in jobs if j not in deciding and j.first_logits_at is None and j.started_at
                    and now - j.started_at > _STARVING_AFTER_S] if deciding else []
        allowance = _STARVING_CHUNK  # for all starving prompts together, oldest first
        for job in (deciding + starving) if deciding else jobs:
            for lane in job.lanes:
                if budget <= 0:
                    return picked
                if lane.pending and id(lane) not in taken and not lane.all_logits:
                    n = min(len(lane.pending), budget, allowance if job in starving else budget)
                    if n <= 0:
                        continue
                    picked.append((job, lane, n))
                    budget -= n
                    if job in starving:
                        allowance -= n
        return picked
