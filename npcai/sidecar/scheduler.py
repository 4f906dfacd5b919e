"""The scheduler: which work goes into the next model step.

Order: the request's ``priority`` (higher first), then earliest deadline, then
decisions before dialogue before background work, then arrival.

- While a decision is pending, a step carries decisions only: eight streams' next
  tokens would make its step about twice as long, and a decision has a deadline while a
  stream only slows down. Dialogue that no step has fed for ``_STARVING_AFTER_S`` gets a
  short step of its own first, when the pending decisions' slack allows it, so a flood of
  decisions cannot stall a conversation and starving dialogue cannot make a decision late.
- Otherwise a step gives every running stream its next token (decode steps, forced runs
  and option trees are short and cheap in a batch), then fills the rest with prompt
  chunks up to the step's budget: every stream waits for each step that carries a prompt
  chunk, so fewer, larger ones stall the streams less often; new lines that do not all
  fit finish together in a later step, beside streams or not (see ``_fill``). (Lines sent
  together also reach the scheduler together: see burst.py.)
  While decisions keep arriving, a step carries either the streams' next tokens or one
  small prompt chunk, whichever waited longer, so that it fits between decisions.

(The engine also preempts a long dialogue step for a decision that could not wait for
it: see engine.py.)
"""

from __future__ import annotations

import math
import time

from npcai.model.runtime import Lane, Runtime
from npcai.sidecar.jobs import DECISION, DIALOGUE, IDLE, Job, pending_cost_s, pending_tokens, step_cost_s

_SHORT = 16  # lanes this short are decode steps or forced runs: never split
_CHUNK_WHILE_DECIDING = 16  # ...in any dialogue step while decisions keep arriving (one in the last second)
_DECIDING_WINDOW_S = 1.0
_STARVING_AFTER_S = 0.3  # dialogue not fed for this long gets a step between decisions...
_STARVING_CHUNK = 16  # ...with this many prompt tokens, all of them together


def urgency_key(job: Job) -> tuple:
    deadline = job.req.deadline
    return (-job.req.priority, deadline if deadline is not None else math.inf, job.urgency, job.req.received)


class Scheduler:
    def __init__(self) -> None:
        self.waiting: list[Job] = []
        self.running: list[Job] = []
        self._last_decision = -math.inf  # when the latest decision arrived (monotonic)

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, job: Job) -> None:
        self.waiting.append(job)
        if job.urgency == DECISION:
            self._last_decision = time.monotonic()

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

    def deciding(self) -> bool:
        """Whether a decision has tokens waiting for a step."""
        return any(_deciding(j) for j in self.running)

    def plan(self, rt: Runtime, max_tokens: int | None = None, *,
             dialogue: bool = True) -> list[tuple[Job, Lane, int]]:
        """(job, lane, n tokens) to evaluate on ``rt`` in its next step, at most ``max_tokens`` in all;
        decisions only when ``dialogue`` is false (the budget is holding dialogue back)."""
        jobs = sorted((j for j in self.running if j.rt is rt and not j.finished), key=urgency_key)
        if any(j.urgency < IDLE and pending_tokens(j) for j in jobs):
            jobs = [j for j in jobs if j.urgency < IDLE]  # thinking ahead takes only steps no one else wants
        budget = min(rt.n_batch, max_tokens or rt.n_batch)
        now = time.monotonic()
        deciding = [j for j in jobs if _deciding(j)]
        if not dialogue:
            return _fill(deciding, budget, budget)
        if deciding:
            # Dialogue that has waited too long gets a short step of its own first, when every
            # pending decision can still make its deadline after it; otherwise decisions go alone.
            starving = [j for j in jobs if j.urgency == DIALOGUE and pending_tokens(j) and _starving(j, now)]
            if starving:
                step = _one_kind(starving, min(budget, _STARVING_CHUNK), budget)
                if step_cost_s(rt, step) < _slack_s(rt, deciding, now):
                    return step
            return _fill(deciding, budget, budget)
        # Keep dialogue steps short while NPCs are talking, shorter while decisions keep coming:
        # an arriving decision waits for the step in flight (or preempts it: see engine.py).
        if now - self._last_decision < _DECIDING_WINDOW_S:
            return _one_kind(jobs, min(budget, _CHUNK_WHILE_DECIDING), budget)
        return _fill(jobs, budget, budget, together=True)


def deadline_share(deadline: float, now: float, costs_s: list[float]) -> float:
    """When the first of several steps that share ``deadline`` must end: the time left, shared out in
    proportion to the steps' estimated costs (``costs_s``, the first step's first)."""
    total = sum(costs_s)
    left = max(0.0, deadline - now)
    return now + (left * costs_s[0] / total if total > 0 else left / len(costs_s))


def _deciding(job: Job) -> bool:
    return job.urgency == DECISION and not job.finished and pending_tokens(job) > 0


def _fill(jobs: list[Job], prompt_budget: int, budget: int, *,
          together: bool = False) -> list[tuple[Job, Lane, int]]:
    """A step for ``jobs`` in order: every short lane whole (a stream's next token, a forced run, an
    option tree), then prompt chunks up to ``prompt_budget`` tokens, at most ``budget`` tokens in all.
    A prompt is a chunk however short it is: eight new lines would otherwise make one long step.

    Beside streams, prompts used to be held to 64 tokens a step so that no stream waited behind a
    long prompt. But with a KV stream per sequence llama.cpp evaluates a prompt chunk in a sub-batch
    of its own, so a step costs the streams' step plus the chunk's, and every running stream waits
    for each such step: eight lines arriving together took three 180 ms steps beside the first
    streams, whose inter-token gap then had its p99 at 4x its mean (issue 18). Now prompts take what
    the budget leaves: fewer steps stall the streams, and the new lines start sooner. ``together``
    (dialogue steps, never decisions): lines that do not all fit finish in one later step, whether or
    not streams are running yet: sixteen lines arriving at once used to start the first ten or so at
    once, which then waited through the others' prompts (Gemma-270M: gap p99 2.4x the mean, issue 18).
    """
    picked: list[tuple[Job, Lane, int]] = []
    taken: set[int] = set()
    for job in jobs:
        for lane in job.lanes:
            n = len(lane.pending)
            short = lane.all_logits or (n <= _SHORT and job.first_logits_at is not None)
            whole = lane.all_logits and not picked  # an option tree is never split: over the budget, it goes alone
            if n and short and (n <= budget or whole):
                picked.append((job, lane, n))
                taken.add(id(lane))
                budget -= n
    budget = min(budget, prompt_budget)
    prompts = [(job, lane) for job in jobs for lane in job.lanes
               if lane.pending and id(lane) not in taken and not lane.all_logits]
    # New lines that do not all fit finish together in a later step, each keeping its last token
    # back: a new stream that started in this step would wait through the next one's prompts.
    hold = int(together and sum(len(lane.pending) for _, lane in prompts) > budget)
    for job, lane in prompts:
        if budget <= 0:
            break
        n = min(len(lane.pending) - hold, budget)
        if n > 0:
            picked.append((job, lane, n))
            budget -= n
    return picked


def _one_kind(jobs: list[Job], prompt_budget: int, budget: int) -> list[tuple[Job, Lane, int]]:
    """The streams' next tokens, or one prompt chunk, whichever has waited longer.

    Every KV sequence has its own stream, and llama.cpp evaluates lanes of different lengths in
    separate sub-batches: a step mixing both costs both (on one thread, 16 prompt tokens beside
    five streams took about 100 ms), which no longer fits between decisions arriving 10 times a
    second; such steps were preempted again and again and dialogue stalled.
    """
    short = _fill(jobs, 0, budget)
    taken = {id(lane) for _, lane, _ in short}
    prompt = next(((j, lane) for j in jobs for lane in j.lanes
                   if lane.pending and id(lane) not in taken and not lane.all_logits), None)
    if prompt is None:
        return short
    chunk = [(prompt[0], prompt[1], min(len(prompt[1].pending), prompt_budget, budget))]
    if not short:
        return chunk
    return chunk if _waiting_since([prompt[0]]) < _waiting_since([j for j, _, _ in short]) else short


def _waiting_since(jobs: list[Job]) -> float:
    return min((j.fed_at or j.started_at or math.inf) for j in jobs)


def _slack_s(rt: Runtime, deciding: list[Job], now: float) -> float:
    """How long the pending decisions could still wait and finish by their deadlines (estimated)."""
    slack = math.inf
    for job in deciding:
        if job.req.deadline is not None:
            slack = min(slack, job.req.deadline - now - pending_cost_s(job))
    return slack


def _starving(job: Job, now: float) -> bool:
    """Dialogue that no step has fed for a while (a stream's next token or a prompt's next chunk)."""
    last = job.fed_at or job.started_at
    return last is not None and now - last > _STARVING_AFTER_S
