"""``say``: the NPC answers a line, streaming it; and the sampling stage that draws all streams' tokens at once."""

from __future__ import annotations

import codecs
import time

import numpy as np

from npcai import protocol as P
from npcai.model import penalties
from npcai.model.lines import Sentences, StopStrings, ends_sentence
from npcai.model.naming import NameGuard
from npcai.model.sampling import Draw, sample_tokens
from npcai.sidecar.jobs.base import NpcWriter, fit
from npcai.sidecar.npc import Npc, persona_name

SAY_DEFAULTS = {"max_tokens": 64, "temperature": 0.7, "top_k": 40, "top_p": 0.95}
SOFT_SHARE = 0.75  # a line's soft limit, as a share of its max_tokens, when the request sets none
SENTENCE_END_BIAS = 2.0  # added to sentence-end tokens' logits once a line is past its soft limit
_RECENT_LINES = 3  # the NPC's last lines that DRY counts as already said


class SayJob(NpcWriter):
    """``say``: the NPC answers a line, streaming its tokens."""

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx, npc)
        self.max_tokens = self.param("max_tokens", SAY_DEFAULTS)
        # Past the soft limit the line ends at its next sentence end (and sentence ends are favoured);
        # max_tokens stays the hard cap.
        self.soft_tokens = min(req.soft_max_tokens or max(1, round(self.max_tokens * SOFT_SHARE)), self.max_tokens)
        self.temperature = float(self.param("temperature", SAY_DEFAULTS))
        self.top_k = self.param("top_k", SAY_DEFAULTS)
        self.top_p = float(self.param("top_p", SAY_DEFAULTS))
        self.stream = req.stream is not False
        stop = req.stop or []
        self.stops = StopStrings([stop] if isinstance(stop, str) else stop)
        self.rng = np.random.default_rng(req.seed) if req.seed is not None else npc.rng
        self.generated: list[int] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._sent = 0
        self._sentences = Sentences()
        self._said: list[int] = []  # tokens of the NPC's last lines (see start)
        self.drawn: int | None = None  # the next token, when the engine sampled it with other streams'
        name = persona_name(npc.persona)
        self._name = NameGuard(rt.model, name) if name else None  # the NPC introduces itself by its name

    def needs_seq(self) -> bool:
        return self.npc.kv_for(self.rt).seq is None

    def start(self) -> None:
        self.claim()
        target = fit(self.npc, self.rt, ("user", self.req.text), self.max_tokens, self.npc_ctx)
        self.lanes = [self._count_prompt(self.rt.attach(self.npc.kv_for(self.rt), target))]
        # The NPC's last lines count as already said: DRY keeps it from saying them again.
        recent = [text for role, text in self.npc.messages if role == "assistant"][-_RECENT_LINES:]
        self._said = [t for text in recent for t in self.rt.text_tokens(text)]

    def draw(self) -> Draw:
        """What the next token is sampled from, once a step has given the lane its logits: repetition
        is penalised, past the soft limit sentence ends are favoured, and where the NPC says who it
        is, its persona's name takes the place of any other (``naming.py``)."""
        logits = self.rt.logits(self.lanes[0].rows[-1])
        penalties.dry(logits, self._said + self.generated)
        if len(self.generated) >= self.soft_tokens:
            logits[self.rt.sentence_end_tokens] += SENTENCE_END_BIAS
        if self._name is not None:
            self._name.adjust(logits, self._text, self.temperature)
        return (logits, self.temperature, self.top_k, self.top_p, self.rng.random())

    def advance(self) -> None:
        lane = self.lanes[0]
        tok, self.drawn = self.drawn, None
        if tok is None:
            tok = sample_tokens([self.draw()])[0]
        if self.rt.model.is_eog(tok):
            return self._end("stop")
        if self._name is not None:
            self._name.observe(tok)
        self.generated.append(tok)
        self._text += self._decoder.decode(self.rt.model.piece(tok))
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        at = self.stops.find(self._text, self._sent)
        if at >= 0:
            self._text = self._text[:at]
            return self._end("stop")
        self._flush(self.stops.safe_end(self._text, self._sent))
        if len(self.generated) >= self.soft_tokens and ends_sentence(self._text):
            return self._end("sentence")
        if len(self.generated) >= self.max_tokens:
            return self._end("length")
        lane.pending = [tok]

    def _flush(self, upto: int) -> None:
        if upto > self._sent:
            if self.stream:
                self.emit(P.token(self.req.id, self._text[self._sent:upto]))
                for sentence in self._sentences.feed(self._text[:upto]):
                    self.emit(P.sentence(self.req.id, sentence))
            self._sent = upto

    def _end(self, reason: str) -> None:
        if reason == "length":
            self._text += self._decoder.decode(b"", final=True)
        self._flush(len(self._text))
        text = self._text
        last = self._sentences.rest(text)
        if self.stream and last:
            self.emit(P.sentence(self.req.id, last))
        self.npc.messages.append(("user", self.req.text))
        self.npc.messages.append(("assistant", text))
        self.finish(P.done(self.req.id, text=text, value=text, tokens=len(self.generated), finish_reason=reason,
                           timed_out=False, used_fallback=False, timing=self.timing(), usage=self.usage))


def draw_together(jobs) -> None:
    """The sampling stage of a step: the next token of every stream the step fed, sampled at once
    (see ``sample_tokens``); each stream's ``advance`` then takes its own."""
    streams = [job for job in jobs if isinstance(job, SayJob) and not job.finished and job.lanes
               and job.lanes[0].ready]
    if len(streams) > 1:
        for job, tok in zip(streams, sample_tokens([job.draw() for job in streams])):
            job.drawn = tok
