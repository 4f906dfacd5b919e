"""One state machine per kind of model work: define an NPC, say, decide, observe.

A job exposes ``lanes`` (tokens it needs evaluated); after each model step the
engine calls ``advance()`` on jobs whose lanes are ready, and the job samples,
emits events and queues its next tokens, or finishes. Jobs never touch the socket:
they call ``emit(reply)``.
"""

from __future__ import annotations

import codecs
import math
import time
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

from . import protocol as P
from .errors import BadRequest, NpcaiError, Overloaded, TooLarge
from .npc import Npc
from .runtime import Lane, Runtime
from .sampling import Draw, sample_token, sample_tokens

Emit = Callable[[dict[str, Any]], None]

SAY_DEFAULTS = {"max_tokens": 64, "temperature": 0.7, "top_k": 40, "top_p": 0.95}
DECIDE_DEFAULTS = {"max_tokens": 256, "temperature": 0.0, "top_k": 0, "top_p": 1.0}

# Urgency classes: decisions overtake dialogue between steps; background work goes last, and
# idle work (thinking ahead) only runs in steps nothing else wants.
DECISION, DIALOGUE, BACKGROUND, IDLE = 0, 1, 2, 3


def pending_tokens(job: "Job") -> int:
    """Tokens the job still needs evaluated, over all its lanes."""
    return sum(len(lane.pending) for lane in job.lanes)


class Job:
    """Common bookkeeping: the request, its runtime, timing, and the lanes it owns."""

    urgency = DIALOGUE

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

    def start(self) -> None:
        raise NotImplementedError

    def advance(self) -> None:
        raise NotImplementedError

    def param(self, name: str, defaults: dict[str, Any]) -> Any:
        return self.req.fields.get(name, defaults[name])

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


def _check_prompt(rt: Runtime, text: str, limit: int) -> None:
    n = len(rt.text_tokens(text))
    if n > limit:
        raise TooLarge(f"text of {n} tokens exceeds max_prompt_tokens={limit}")


def _fit(npc: Npc, rt: Runtime, extra: tuple[str, str] | None, room: int, npc_ctx: int) -> list[int]:
    """Render the NPC's chat (plus ``extra``), letting old turns go until it fits its window."""
    while True:
        tokens = rt.prompt_tokens(npc.chat(extra), add_generation_prompt=True) if extra else \
            rt.prefix_tokens(npc.chat())
        if len(tokens) + room <= npc_ctx or not npc.drop_oldest_turn():
            if len(tokens) + room > npc_ctx:
                raise TooLarge(f"persona and request need {len(tokens) + room} tokens; npc_ctx is {npc_ctx}")
            return tokens


def _take_over_idle_writer(npc: Npc) -> None:
    """Thinking ahead that has not begun gives way: the arriving job's own prompt covers it."""
    writer = npc.writer
    if writer is not None and writer.urgency == IDLE and writer.fed_at is None:
        writer.finish(None)


class _NpcWriter(Job):
    """A job that extends an NPC's own sequence; one at a time per NPC, in arrival order."""

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx)
        self.npc = npc
        self._holding = False

    def ready(self) -> bool:
        if self.urgency < IDLE:
            _take_over_idle_writer(self.npc)
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


class DefineJob(_NpcWriter):
    """``npc``: evaluate the persona prefix so later lines start warm."""

    urgency = BACKGROUND

    def start(self) -> None:
        self.claim()
        target = _fit(self.npc, self.rt, None, 0, self.npc_ctx)
        lane = self.rt.attach(self.npc.kv_for(self.rt), target)
        if lane.pending:
            self.lanes.append(lane)
        else:
            self.finish(self._reply(len(target)))

    def advance(self) -> None:
        self.finish(self._reply(self.lanes[0].pos))

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


class SayJob(_NpcWriter):
    """``say``: the NPC answers a line, streaming its tokens."""

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx, npc)
        f = req.fields
        self.max_tokens = self.param("max_tokens", SAY_DEFAULTS)
        self.temperature = float(self.param("temperature", SAY_DEFAULTS))
        self.top_k = self.param("top_k", SAY_DEFAULTS)
        self.top_p = float(self.param("top_p", SAY_DEFAULTS))
        self.stream = f.get("stream", True)
        stop = f.get("stop", [])
        self.stops = [s for s in ([stop] if isinstance(stop, str) else stop) if s]
        self.rng = np.random.default_rng(f["seed"]) if "seed" in f else npc.rng
        self.generated: list[int] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._sent = 0
        self.drawn: int | None = None  # the next token, when the engine sampled it with other streams'

    def start(self) -> None:
        self.claim()
        target = _fit(self.npc, self.rt, ("user", self.req.fields["text"]), self.max_tokens, self.npc_ctx)
        self.lanes = [self._count_prompt(self.rt.attach(self.npc.kv_for(self.rt), target))]

    def draw(self) -> Draw:
        """What the next token is sampled from, once a step has given the lane its logits."""
        return (self.rt.logits(self.lanes[0].rows[-1]), self.temperature, self.top_k, self.top_p,
                self.rng.random())

    def advance(self) -> None:
        lane = self.lanes[0]
        tok, self.drawn = self.drawn, None
        if tok is None:
            tok = sample_tokens([self.draw()])[0]
        if self.rt.model.is_eog(tok):
            return self._end("stop")
        self.generated.append(tok)
        self._text += self._decoder.decode(self.rt.model.piece(tok))
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        for s in self.stops:
            at = self._text.find(s, max(0, self._sent - len(s)))
            if at >= 0:
                self._text = self._text[:at]
                return self._end("stop")
        self._flush(self._safe_end())
        if len(self.generated) >= self.max_tokens:
            return self._end("length")
        lane.pending = [tok]

    def _safe_end(self) -> int:
        """How much text can go out without giving away the start of a stop string."""
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self._text)), 0, -1):
                if self._text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return len(self._text) - hold

    def _flush(self, upto: int) -> None:
        if upto > self._sent:
            if self.stream:
                self.emit(P.token(self.req.id, self._text[self._sent:upto]))
            self._sent = upto

    def _end(self, reason: str) -> None:
        if reason == "length":
            self._text += self._decoder.decode(b"", final=True)
        self._flush(len(self._text))
        text = self._text
        self.npc.messages.append(("user", self.req.fields["text"]))
        self.npc.messages.append(("assistant", text))
        self.finish(P.done(self.req.id, text=text, value=text, tokens=len(self.generated), finish_reason=reason,
                           timed_out=False, used_fallback=False, timing=self.timing(), usage=self.usage))


def _decide_prompt(fields: dict[str, Any]) -> str:
    """The user turn of a decision: the situation, and nothing the constraint already enforces.

    Choices are not listed: they are scored directly, and measured on the village scenario,
    listing them doubled the prompt (46-67 vs 19-32 tokens) and made the picks worse.
    """
    situation = fields["situation"].strip()
    return f"{situation}\n\nAnswer in JSON." if "schema" in fields else situation


class _Decision(Job):
    urgency = DECISION

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx)
        self.npc = npc
        self.temperature = float(self.param("temperature", DECIDE_DEFAULTS))
        self.rng = np.random.default_rng(req.fields["seed"]) if "seed" in req.fields else npc.rng
        self._kv = npc.kv_for(rt)
        self._kv.users += 1
        self._holding = True
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

    def _start_fork(self) -> None:
        """Evaluate the situation after the NPC's cached prefix: in the NPC's own sequence, rolled
        back to its history afterwards, when nothing else is writing it (a fork copies a whole KV
        stream: about 8 ms for SmolLM2), else in a fork. A cold NPC's prefix stays cached."""
        target = _fit(self.npc, self.rt, ("user", _decide_prompt(self.req.fields)), 8, self.npc_ctx)
        _take_over_idle_writer(self.npc)
        if self.npc.writer is None:
            lane = self.rt.borrow(self._kv, target)
            self.npc.writer = self
            keep = self.rt.prefix_tokens(self.npc.chat())  # the history stays evaluated: it is the next line's too
            self._borrowed = (lane, keep if target[:len(keep)] == keep else [])
        else:
            lane = self._fork(self.rt.fork(self._kv, target))
        self.lanes = [self._count_prompt(lane)]

    def _done(self, value: Any, text: str, tokens: int, reason: str, **extra: Any) -> None:
        ok = reason == "stop"
        self.finish(P.done(self.req.id, value=value if ok else self.req.fallback, text=text, tokens=tokens,
                           finish_reason=reason, timed_out=False, used_fallback=not ok, timing=self.timing(),
                           usage=self.usage, **extra))


class GrammarDecideJob(_Decision):
    """``decide`` with a schema or grammar: constrained sampling with jump-forward."""

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc, compiled: Future):
        super().__init__(req, rt, emit, npc_ctx, npc)
        self.compiled = compiled
        self.max_tokens = self.param("max_tokens", DECIDE_DEFAULTS)
        self.top_k = self.param("top_k", DECIDE_DEFAULTS)
        self.top_p = float(self.param("top_p", DECIDE_DEFAULTS))
        self.state = None
        self.generated: list[int] = []
        self.forced = 0

    def ready(self) -> bool:
        if not self.compiled.done():
            if time.monotonic() - self.req.received > self.rt.compiler.compile_timeout:
                self.compiled.cancel()
                raise TooLarge(f"constraint took over {self.rt.compiler.compile_timeout:.1f} s to compile")
            return False
        return True

    def start(self) -> None:
        try:
            self.state = self.compiled.result().start()
        except NpcaiError:
            raise
        except Exception as exc:  # the compiler's own failures are the caller's grammar's fault
            raise BadRequest(f"constraint does not compile: {exc}") from None
        self._start_fork()
        forced = self.state.forced()  # e.g. '{"action": "': evaluated with the prompt, never sampled
        for t in forced:
            if not self.state.consume(t):
                raise BadRequest("constraint rejected its own forced start")
        self.generated.extend(forced)
        self.forced += len(forced)
        self.lanes[0].pending.extend(forced)

    def advance(self) -> None:
        lane = self.lanes[0]
        st = self.state
        st.fill_mask(self.rt.mask)
        tok = int(sample_token(self.rt.logits(lane.rows[-1]), self.rt.mask, self.temperature, self.top_k,
                               self.top_p, self.rng.random()))
        if tok < 0 or not st.consume(tok):
            return self._done(None, self._text(), len(self.generated), "error")
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if self.rt.model.is_eog(tok) or tok == self.rt.model.eos:
            return self._finish_text()
        self.generated.append(tok)
        forced = st.forced() if not st.stopped else []
        for t in forced:
            if not st.consume(t):
                return self._done(None, self._text(), len(self.generated), "error")
        self.generated.extend(forced)
        self.forced += len(forced)
        if st.stopped:  # a trailing forced suffix is never evaluated
            return self._finish_text()
        if len(self.generated) >= self.max_tokens:
            return self._done(None, self._text(), len(self.generated), "length")
        lane.pending = [tok, *forced]

    def _text(self) -> str:
        return self.rt.detokenize(self.generated)

    def _finish_text(self) -> None:
        text = self._text()
        try:
            value = self.state.value(text)
        except ValueError:
            return self._done(None, text, len(self.generated), "error")
        self._done(value, text, len(self.generated), "stop", forced_tokens=self.forced)


class ChoiceDecideJob(_Decision):
    """``decide`` with choices: the probability that constrained decoding picks each option.

    The options' tokens (each ending with the end of the turn) form a trie. Where only one
    token can follow, it is forced and costs nothing; only nodes where options diverge need
    logits, and all nodes of one depth are evaluated in one batch. Options with distinct
    first tokens, the usual case, are answered from the prompt's own step.
    """

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx, npc)
        self.choices: list[str] = req.fields["choices"]
        end = rt.model.eot
        self.options = [rt.text_tokens(c) + [end] for c in self.choices]
        self.logp = [0.0] * len(self.choices)
        self.branches: list[tuple[Lane, list[int], int]] = []  # (lane, option indices, depth) awaiting logits

    def start(self) -> None:
        self._start_fork()

    def advance(self) -> None:
        base = self.lanes[0]
        ready: list[tuple[np.ndarray, list[int], int]] = []
        if base.ready:  # the situation is evaluated: its logits choose among first tokens
            ready.append((self.rt.logits(base.rows[-1]), list(range(len(self.options))), 0))
        for lane, group, depth in [b for b in self.branches if b[0].ready]:
            ready.append((self.rt.logits(lane.rows[-1]), group, depth))
            self.branches.remove((lane, group, depth))
            self.rt.release(lane.seq)
            self._temp_seqs.remove(lane.seq)
        for logits, group, depth in ready:
            self._split(logits, group, depth)
        self.lanes = [base, *(lane for lane, _, _ in self.branches)]
        if not self.branches:
            self._pick()

    def _split(self, logits: np.ndarray, group: list[int], depth: int) -> None:
        """Score the tokens that options in ``group`` may take at ``depth``; branch where they diverge again."""
        by_token: dict[int, list[int]] = {}
        for i in group:
            by_token.setdefault(self.options[i][depth], []).append(i)
        tokens = list(by_token)
        if len(tokens) > 1:
            chosen = logits[tokens].astype(np.float64)
            lse = chosen.max() + math.log(float(np.exp(chosen - chosen.max()).sum()))
            for t, lp in zip(tokens, chosen - lse):
                for i in by_token[t]:
                    self.logp[i] += float(lp)
        for t, members in by_token.items():
            if len(members) == 1:
                continue  # the rest of this option is forced
            d = depth + 1  # follow the run of tokens every member shares; no logits needed there
            while d < min(len(self.options[i]) for i in members) and len({self.options[i][d] for i in members}) == 1:
                d += 1
            lane = self.rt.branch(self.lanes[0], self.options[members[0]][:d])
            if lane is None:
                raise Overloaded("no KV sequence free to score these choices")
            lane.all_logits = False
            self.branches.append((self._fork(lane), members, d))

    def _pick(self) -> None:
        top = max(self.logp)
        weights = [math.exp(lp - top) for lp in self.logp]
        total = sum(weights)
        probs = {c: w / total for c, w in zip(self.choices, weights)}
        if self.temperature <= 0:
            pick = max(range(len(self.choices)), key=lambda i: self.logp[i])
        else:
            tempered = np.array([(lp - top) / self.temperature for lp in self.logp])
            p = np.exp(tempered) / np.exp(tempered).sum()
            pick = int(np.searchsorted(np.cumsum(p), self.rng.random() * p.sum(), side="right").clip(0, len(p) - 1))
        self.first_token_at = time.monotonic()
        choice = self.choices[pick]
        self._done(choice, choice, len(self.options[pick]) - 1, "stop", probs=probs)
