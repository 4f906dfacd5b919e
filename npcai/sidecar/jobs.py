"""One state machine per kind of model work: define an NPC, say, decide, observe.

A job exposes ``lanes`` (tokens it needs evaluated); after each model step the
engine calls ``advance()`` on jobs whose lanes are ready, and the job samples,
emits events and queues its next tokens, or finishes. Jobs never touch the socket:
they call ``emit(reply)``.
"""

from __future__ import annotations

import codecs
import time
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

from npcai import protocol as P
from npcai.errors import BadRequest, NpcaiError, TooLarge
from npcai.model import choices, penalties
from npcai.model.lines import ends_sentence
from npcai.model.runtime import Lane, Runtime
from npcai.model.sampling import Draw, sample_token, sample_tokens
from npcai.model.scoring import TREE_ROOM, OptionTree, common_prefix
from npcai.sidecar.npc import DEFAULT_LEAD, Npc, as_question

Emit = Callable[[dict[str, Any]], None]

SAY_DEFAULTS = {"max_tokens": 64, "temperature": 0.7, "top_k": 40, "top_p": 0.95}
#: Digits in a row after which a constrained value's number must end: tiny models write digits
#: until the token cap where a schema leaves a number's fraction open (JSONSchemaBench: 8 of 120).
MAX_NUMBER_DIGITS = 12
SOFT_SHARE = 0.75  # a line's soft limit, as a share of its max_tokens, when the request sets none
SENTENCE_END_BIAS = 2.0  # added to sentence-end tokens' logits once a line is past its soft limit
_RECENT_LINES = 3  # the NPC's last lines that DRY counts as already said
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


def _fit(npc: Npc, rt: Runtime, extra: tuple[str, str] | None, room: int, npc_ctx: int, lead: str = "") -> list[int]:
    """Render the NPC's chat (plus ``extra`` and the answer's ``lead``), letting old turns go until it
    fits its window."""
    while True:
        tokens = rt.prompt_tokens(npc.chat(extra), add_generation_prompt=True, lead=lead) if extra else \
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
        # Past the soft limit the line ends at its next sentence end (and sentence ends are favoured);
        # max_tokens stays the hard cap.
        self.soft_tokens = min(f.get("soft_max_tokens", max(1, round(self.max_tokens * SOFT_SHARE))), self.max_tokens)
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
        self._said: list[int] = []  # tokens of the NPC's last lines (see start)
        self.drawn: int | None = None  # the next token, when the engine sampled it with other streams'

    def start(self) -> None:
        self.claim()
        target = _fit(self.npc, self.rt, ("user", self.req.fields["text"]), self.max_tokens, self.npc_ctx)
        self.lanes = [self._count_prompt(self.rt.attach(self.npc.kv_for(self.rt), target))]
        # The NPC's last lines count as already said: DRY keeps it from saying them again.
        recent = [text for role, text in self.npc.messages if role == "assistant"][-_RECENT_LINES:]
        self._said = [t for text in recent for t in self.rt.text_tokens(text)]

    def draw(self) -> Draw:
        """What the next token is sampled from, once a step has given the lane its logits: repetition
        is penalised, and past the soft limit sentence ends are favoured."""
        logits = self.rt.logits(self.lanes[0].rows[-1])
        penalties.dry(logits, self._said + self.generated)
        if len(self.generated) >= self.soft_tokens:
            logits[self.rt.sentence_end_tokens] += SENTENCE_END_BIAS
        return (logits, self.temperature, self.top_k, self.top_p, self.rng.random())

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
        if len(self.generated) >= self.soft_tokens and ends_sentence(self._text):
            return self._end("sentence")
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


def _decide_prompt(fields: dict[str, Any], situation: str | None = None) -> str:
    """The user turn of a decision: the situation, and nothing the constraint already enforces.

    Choices are not listed: they are scored directly, and listing them made the picks worse
    (SmolLM2 on the game set: 39 % against 65 %, docs/QUALITY.md). With the default lead the
    situation is asked as a question, which the lead then answers.
    """
    situation = (situation if situation is not None else fields["situation"]).strip()
    if "schema" in fields:
        return f"{situation}\n\nAnswer in JSON."
    if "choices" in fields and "lead" not in fields:
        return as_question(situation)
    return situation


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

    def _start_fork(self, lead: str = "", room: int = 8) -> None:
        """Evaluate the situation after the NPC's cached prefix: in the NPC's own sequence, rolled
        back to its history afterwards, when nothing else is writing it (a fork copies a whole KV
        stream: about 8 ms for SmolLM2), else in a fork. A cold NPC's prefix stays cached."""
        target = _fit(self.npc, self.rt, ("user", _decide_prompt(self.req.fields)), room, self.npc_ctx, lead)
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
        self._digits = 0  # digits sampled in a row: the number being written

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
        if len(forced) > self.max_tokens:  # forced tokens count towards max_tokens too
            self.generated = forced[:self.max_tokens]
            return self._done(None, self._text(), len(self.generated), "length")
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
        if self._digits >= MAX_NUMBER_DIGITS:  # a number this long ends now (wherever the grammar lets it)
            penalties.forbid(self.rt.mask, self.rt.digit_mask)
        logits = self.rt.logits(lane.rows[-1])
        penalties.dry(logits, self.generated)  # loops inside open values end before the cap
        tok = int(sample_token(logits, self.rt.mask, self.temperature, self.top_k, self.top_p, self.rng.random()))
        if tok < 0 or not st.consume(tok):
            return self._done(None, self._text(), len(self.generated), "error")
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if self.rt.model.is_eog(tok) or tok == self.rt.model.eos:
            return self._finish_text()
        self.generated.append(tok)
        piece = self.rt.model.piece(tok)
        self._digits = self._digits + len(piece) if piece.isdigit() else 0
        forced = st.forced() if not st.stopped else []
        room = self.max_tokens - len(self.generated)
        if len(forced) > room:  # forced tokens count towards max_tokens too
            self.generated.extend(forced[:room])
            return self._done(None, self._text(), len(self.generated), "length")
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
    """``decide`` with choices: every option's whole text scored by the model, then calibrated.

    The situation is asked as a question and the answer starts with a lead ("The sensible thing to
    do is to", unless the request gives its own) that each option completes. One step scores every
    token of every option, not only the first one where the options differ: an option tree in the
    option scorer's cache, which starts from the NPC's evaluated persona and history (``scoring.py``).
    The first decision over an option set also scores the options under a content-free situation,
    in the same step: their prior. Scoring and calibration are ``choices.py``'s.
    """

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx, npc)
        f = req.fields
        self.choices: list[str] = f["choices"]
        self.lead = f.get("lead", DEFAULT_LEAD).strip()
        words = f.get("descriptions", {})
        self.options = choices.option_tokens(rt, self.lead, [words.get(c, c) for c in self.choices])
        self.loglik = np.zeros(len(self.choices))
        self.prior_key = choices.prior_key(npc, self.lead, self.options)
        self.prior: np.ndarray | None = rt.choice_priors.get(self.prior_key)
        self._new_prior = self.prior is None  # computed by this job, then cached

    def start(self) -> None:
        target = _fit(self.npc, self.rt, ("user", _decide_prompt(self.req.fields)), 1, self.npc_ctx, self.lead)
        stems = [target]
        if self._new_prior:  # the options' prior under a content-free situation, once per option set
            content_free = _decide_prompt(self.req.fields, choices.CONTENT_FREE)
            prior = choices.prior_prompt(self.rt, self.npc, content_free, self.lead)
            if prior != target:
                stems.append(prior)
        scorer = self.rt.scorer
        if len(stems) > 1 and not scorer.fits(stems, self.options):
            stems, self._new_prior = stems[:1], False  # too big to score with its prior: goes without it
        if not scorer.fits(stems, self.options):
            raise TooLarge("these options are too many or too long to score together "
                           f"(at most {scorer.max_seqs // 2} options and {TREE_ROOM} tokens of situation and options)")
        keep = self.rt.prefix_tokens(self.npc.chat())  # the NPC's persona and history: kept cached for its next decision
        cached = min(common_prefix(self._kv.tokens, target), len(target) - 1)
        pending = len(target) - cached + sum(len(s) - common_prefix(s, target) for s in stems[1:])
        pending += len(stems) * sum(len(o) - 1 for o in self.options)
        tree = OptionTree(seq=-1, pos=cached, pending=[0] * pending, all_logits=True, stems=stems,
                          options=self.options, source=self._kv,
                          keep=len(keep) if target[:len(keep)] == keep else 0)
        self.lanes = [self._count_prompt(tree)]

    def advance(self) -> None:
        tree = self.lanes[0]
        self.loglik = tree.scores[0]
        if self._new_prior:
            self.prior = tree.scores[1] if len(tree.scores) > 1 else tree.scores[0]
        self.lanes = []
        self._pick()

    def _pick(self) -> None:
        if self._new_prior:
            self.rt.choice_priors.put(self.prior_key, self.prior)
        probs = choices.probabilities(self.loglik, self.prior, self.rt.choice_temperature)
        if self.temperature <= 0:
            pick = int(np.argmax(probs))
        else:
            tempered = probs ** (1.0 / self.temperature)
            pick = int(np.searchsorted(np.cumsum(tempered / tempered.sum()), self.rng.random(), side="right")
                       .clip(0, len(probs) - 1))
        self.first_token_at = time.monotonic()
        choice = self.choices[pick]
        self._done(choice, choice, len(self.options[pick]), "stop",
                   probs={c: float(p) for c, p in zip(self.choices, probs)})
