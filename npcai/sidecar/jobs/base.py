"""What every job shares: urgency classes, bookkeeping, fitting a chat into its window, and the
one-writer-per-NPC rule."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from npcai import protocol as P
from npcai.errors import Overloaded, TooLarge
from npcai.model.runtime import Lane, Runtime
from npcai.sidecar.npc import Npc

Emit = Callable[[dict[str, Any]], None]

# Urgency classes: decisions overtake dialogue between steps; background work goes last, and
# idle work (thinking ahead) only runs in steps nothing else wants.
DECISION, DIALOGUE, BACKGROUND, IDLE = 0, 1, 2, 3


def pending_tokens(job: "Job") -> int:
    """Tokens the job still needs evaluated, over all its lanes."""
    return sum(len(lane.pending) for lane in job.lanes)


def scores_trees(lanes: Iterable[Lane]) -> bool:
    """Whether a step over ``lanes`` scores an option tree (costed as one: ``Runtime.estimate_s``)."""
    return any(lane.all_logits for lane in lanes)


def pending_cost_s(job: "Job") -> float:
    """What evaluating the job's pending tokens is expected to cost (in one step)."""
    return job.rt.estimate_s(pending_tokens(job), tree=scores_trees(job.lanes))


def step_cost_s(rt: Runtime, plan: "list[tuple[Job, Lane, int]]") -> float:
    """What a planned step of (job, lane, n tokens) is expected to cost."""
    return rt.estimate_s(sum(n for _, _, n in plan), len(plan), tree=scores_trees(lane for _, lane, _ in plan))


class Job:
    """Common bookkeeping: the request, its runtime, timing, and the lanes it owns."""

    urgency = DIALOGUE
    counted = False  # a client's open request, counted against max_queue (set when the engine queues it)

    def __init__(self, req: P.Request, rt: Runtime, emit: Emit, npc_ctx: int):
        self.req, self.rt, self.emit, self.npc_ctx = req, rt, emit, npc_ctx
        self.lanes: list[Lane] = []
        self.finished = False
        self.started_at: float | None = None
        self.first_logits_at: float | None = None
        self.fed_at: float | None = None  # the last step that evaluated tokens of this job
        self.first_token_at: float | None = None
        self._temp_seqs: list[int] = []
        self.usage = {"prompt_tokens": 0, "cached_tokens": 0, "evaluated_tokens": 0, "steps": 0}

    # Subclasses: ready() says whether start() may run now; start() builds lanes; advance() consumes logits.
    def ready(self) -> bool:
        return True

    def needs_seq(self) -> bool:
        """Whether ``start`` would take a fresh KV sequence now: such a job waits while none can be had."""
        return False

    def start(self) -> None:
        raise NotImplementedError

    def advance(self) -> None:
        raise NotImplementedError

    def param(self, name: str, defaults: dict[str, Any]) -> Any:
        """The request's own value of a sampling parameter, else the default."""
        value = getattr(self.req, name)
        return defaults[name] if value is None else value

    def timing(self) -> dict[str, float]:
        now = time.monotonic()
        r = self.req.received

        def ms(t: float | None) -> float:
            return round(((t if t is not None else now) - r) * 1e3, 3)

        return {"queue_ms": ms(self.started_at),
                "prefill_ms": round(((self.first_logits_at or now) - (self.started_at or now)) * 1e3, 3),
                "ttft_ms": ms(self.first_token_at or self.first_logits_at), "total_ms": ms(now)}

    def _count_prompt(self, lane: Lane) -> Lane:
        self.usage["prompt_tokens"] += len(lane.pending)
        self.usage["cached_tokens"] += lane.pos
        return lane

    def _fork(self, lane: Lane) -> Lane:
        self._temp_seqs.append(lane.seq)
        return lane

    def cancelled_reply(self) -> dict[str, Any]:
        """The ending of a request its client cancelled."""
        return P.cancelled(self.req.id)

    def expired_reply(self) -> dict[str, Any] | None:
        """The ending of a request whose deadline passed, or whose client left: none, the server answered."""
        return None

    def overloaded(self, err: Overloaded) -> None:
        """The model had no room for this job's step (no KV sequence or cell free, none to evict)."""
        self.finish(P.error(self.req.id, err))

    def finish(self, reply: dict[str, Any] | None) -> None:
        """End the job, free its forks, and send its last reply (None when cancelled)."""
        if self.finished:
            return
        self.finished = True
        for seq in self._temp_seqs:
            self.rt.release(seq)
        self._temp_seqs.clear()
        self.lanes = []
        self.release_npc()
        if reply is not None:
            self.emit(reply)

    def release_npc(self) -> None:
        pass


def fit(npc: Npc, rt: Runtime, extra: tuple[str, str] | None, room: int, npc_ctx: int, lead: str = "") -> list[int]:
    """Render the NPC's chat (plus ``extra`` and the answer's ``lead``), letting old turns go until it
    fits its window with ``room`` to spare; the persona, the examples and the newest exchange stay.

    When turns must go, enough go at once that the history takes at most half of what the window leaves
    (as llama.cpp's context shift discards half): each drop changes the text right after the persona, so
    nothing past it stays cached, and dropping only what the next line needs made every later line
    evaluate the whole history again (SmolLM2, a 1024-token window: 900 tokens, 2.1 s to its first token
    instead of 0.14). The next lines now fit as they are, and reuse it."""
    def render() -> list[int]:
        return rt.prompt_tokens(npc.chat(extra), add_generation_prompt=True, lead=lead) if extra else \
            rt.prefix_tokens(npc.chat())

    tokens = render()
    if len(tokens) + room <= npc_ctx:
        return tokens
    bare = len(rt.prompt_tokens(npc.persona_chat(extra), add_generation_prompt=True, lead=lead) if extra else
               rt.prefix_tokens(npc.persona_chat()))
    keep = (npc_ctx - room - bare) // 2  # tokens of history that may stay
    while len(tokens) + room > npc_ctx or (len(tokens) - bare > keep and len(npc.messages) > 2):
        if not npc.drop_oldest_turn():
            raise TooLarge(f"persona and request need {len(tokens) + room} tokens; npc_ctx is {npc_ctx}")
        tokens = render()
    return tokens


def take_over_idle_writer(npc: Npc) -> None:
    """Thinking ahead that has not begun gives way: the arriving job's own prompt covers it."""
    writer = npc.writer
    if writer is not None and writer.urgency == IDLE and writer.fed_at is None:
        writer.finish(None)


class NpcWriter(Job):
    """A job that extends an NPC's own sequence; one at a time per NPC, in arrival order."""

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx)
        self.npc = npc
        self._holding = False

    def ready(self) -> bool:
        if self.urgency < IDLE:
            take_over_idle_writer(self.npc)
        return self.npc.writer is None or self.npc.writer is self

    def claim(self) -> None:
        self.npc.writer = self
        self.npc.kv_for(self.rt).users += 1
        self._holding = True

    def release_npc(self) -> None:
        if self._holding:
            self._holding = False
            self.npc.kv_for(self.rt).users -= 1
            if self.npc.writer is self:
                self.npc.writer = None


