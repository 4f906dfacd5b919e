"""The scheduler: which work goes into the next model step.

Order: the request's ``priority`` (higher first), then earliest deadline, then
decisions before dialogue before background work, then arrival. While a decision has
tokens to evaluate, steps carry decisions only: dialogue waits a step or two, and the
decision meets its deadline. Otherwise each step first gives every running stream its
next token (decode steps and forced runs are short), then fills what is left of the
token budget with prompt chunks in the same order, so a long prompt never stalls the
NPCs that are already talking.
"""

from __future__ import annotations

import math

from .jobs import DECISION, Job
from .runtime import Lane, Runtime

_SHORT = 16  # lanes this short are decode steps, forced runs or choice branches: never split


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
        deciding = [j for j in jobs if j.urgency == DECISION and any(lane.pending for lane in j.lanes)]
        if deciding:
            jobs = deciding
        budget = min(rt.n_batch, max_tokens or rt.n_batch)
        picked: list[tuple[Job, Lane, int]] = []
        taken: set[int] = set()
        for job in jobs:
            for lane in job.lanes:
                n = len(lane.pending)
                if n and (n <= _SHORT or lane.all_logits) and n <= budget:
                    picked.append((job, lane, n))
                    taken.add(id(lane))
                    budget -= n
        for job in jobs:
            for lane in job.lanes:
                if budget <= 0:
                    return picked
                if lane.pending and id(lane) not in taken and not lane.all_logits:
                    n = min(len(lane.pending), budget)
                    picked.append((job, lane, n))
                    budget -= n
        return picked
