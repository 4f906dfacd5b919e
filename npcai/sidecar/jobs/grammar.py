"""``decide`` with a schema, grammar or regex: constrained sampling with jump-forward."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from npcai.errors import BadRequest, NpcaiError, TooLarge
from npcai.model import penalties
from npcai.model.json_keys import KeyTracker
from npcai.model.sampling import sample_token
from npcai.sidecar.jobs.base import IDLE
from npcai.sidecar.jobs.decision import DECIDE_DEFAULTS, Decision
from npcai.sidecar.npc import Npc

#: Digits in a row after which a constrained value's number must end: tiny models write digits
#: until the token cap where a schema leaves a number's fraction open (JSONSchemaBench: 8 of 120).
MAX_NUMBER_DIGITS = 12
#: Tokens after which a JSON string ends at the first place its schema lets it: tiny models fill a
#: string up to the token cap where its pattern is open-ended ("^test|prod$", an unanchored "^[a-z]+:")
#: or its maxLength is large (JSONSchemaBench: 6 of 120). About 250 characters: past any
#: default bound (32), and past most text a game asks for.
MAX_STRING_TOKENS = 64
#: The share of ``max_tokens`` after which a JSON answer heads for its end, when the request sets no
#: ``soft_max_tokens``: each string ends, and each array and object closes, at the first place its
#: schema lets it. Tiny models otherwise fill long structures past the cap (JSONSchemaBench).
SOFT_SHARE = 0.5


class GrammarDecideJob(Decision):
    """``decide`` with a schema, grammar or regex: constrained sampling with jump-forward."""

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
        # A JSON answer's strings and keys, followed as it is written (a double quote ends a string only in JSON):
        # no key is written twice in one object, and the string guard and the way out know where they are.
        self._keys = KeyTracker() if "schema" in req.fields else None
        self._unquoted = 0  # tokens since the last one holding an unescaped double quote: the string being written
        soft = req.soft_max_tokens or max(1, round(self.max_tokens * SOFT_SHARE))
        self.soft_tokens = min(soft, self.max_tokens)  # past it a JSON answer takes the way out

    def ready(self) -> bool:
        if not self.compiled.done():
            if time.monotonic() - self.req.received > self.rt.compiler.compile_timeout:
                self.compiled.cancel()
                raise TooLarge(f"constraint took over {self.rt.compiler.compile_timeout:.1f} s to compile")
            return False
        return True

    def needs_seq(self) -> bool:
        """A fork while another job writes the NPC (thinking ahead that has not begun gives way), else the
        NPC's own sequence, which a parked NPC must get back."""
        writer = self.npc.writer
        if writer is not None and not (writer.urgency == IDLE and writer.fed_at is None):
            return True
        return self._kv.seq is None

    def start(self) -> None:
        try:
            self.state = self.compiled.result().start()
        except NpcaiError:
            raise
        except Exception as exc:  # the compiler's own failures are the caller's grammar's fault
            raise BadRequest(f"constraint does not compile: {exc}") from None
        forced = self.state.forced()  # e.g. '{"action": "': evaluated with the prompt, never sampled
        if len(forced) > self.max_tokens:  # forced tokens count towards max_tokens too: nothing is evaluated
            self.generated = forced[:self.max_tokens]
            self.forced += len(self.generated)
            return self._done(None, self._text(), len(self.generated), "length")
        for t in forced:
            if not self.state.consume(t):
                raise BadRequest("constraint rejected its own forced start")
        self.generated.extend(forced)
        self.forced += len(forced)
        if self.state.stopped:  # the whole answer was forced
            return self._finish_text()
        if len(self.generated) == self.max_tokens:  # no room to sample: the forced start is the answer, or none
            return self._finish_text("length") if self.state.accepting else self._done(None, self._text(),
                                                                                       len(self.generated), "length")
        self._start_fork()
        self._wrote(forced)
        self.lanes[0].pending.extend(forced)

    def advance(self) -> None:
        lane = self.lanes[0]
        st = self.state
        st.fill_mask(self.rt.mask)
        if self._keys is not None:  # first: no way out below may write a repeated key either
            self._forbid_repeated_keys()
        if self._digits >= MAX_NUMBER_DIGITS:  # a number this long ends now (wherever the grammar lets it)
            penalties.forbid(self.rt.mask, self.rt.digit_mask)
        if self._keys is not None and self._unquoted >= MAX_STRING_TOKENS:  # a string this long ends now (where it may)
            penalties.prefer(self.rt.mask, self.rt.quote_mask)
        if self._keys is not None and len(self.generated) >= self.soft_tokens:  # past its soft limit: the way out
            penalties.prefer(self.rt.mask, self.rt.string_end_mask if self._keys.in_string else self.rt.close_mask)
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
        self._wrote([tok])
        forced = st.forced() if not st.stopped else []
        room = self.max_tokens - len(self.generated)  # >= 0: a token is sampled only below max_tokens
        if len(forced) > room:  # forced tokens count towards max_tokens too
            self.generated.extend(forced[:room])
            self.forced += room
            return self._done(None, self._text(), len(self.generated), "length")
        for t in forced:
            if not st.consume(t):
                return self._done(None, self._text(), len(self.generated), "error")
        self.generated.extend(forced)
        self.forced += len(forced)
        self._wrote(forced)
        if st.stopped:  # a trailing forced suffix is never evaluated
            return self._finish_text()
        if len(self.generated) >= self.max_tokens:  # at the cap: a complete answer stands (the cap ended it), else none
            return self._finish_text("length") if st.accepting else self._done(None, self._text(),
                                                                               len(self.generated), "length")
        lane.pending = [tok, *forced]

    def _forbid_repeated_keys(self) -> None:
        """Take out of the mask every token that would write a key its object already has (json_keys): one
        that ends the key being written as such a key, or that holds such a key whole between its quotes.
        Only tokens the grammar allows now and that hold a quote are looked at (a few dozen, mostly)."""
        keys, piece, runs = self._keys, self.rt.model.piece, self.rt.quoted_runs
        here = keys.keys_here()
        if not here:
            return
        toks = self.rt.quote_tokens
        allowed = toks[(self.rt.mask.view(np.uint32)[toks >> 5] >> (toks & 31).astype(np.uint32)) & 1 == 1]
        ends = keys.repeat_endings()
        repeats = [t for t in allowed.tolist()
                   if (ends and piece(t).startswith(ends))
                   or (not here.isdisjoint(runs.get(t, ())) and keys.would_repeat(piece(t)))]
        penalties.forbid_each(self.rt.mask, repeats)

    def _wrote(self, tokens: list[int]) -> None:
        """Follow a JSON answer's text past ``tokens`` (``_keys``), and ``_unquoted``: reset by a token that holds
        an unescaped double quote."""
        if self._keys is None:
            return
        for tok in tokens:
            self._unquoted = 0 if self._keys.feed(self.rt.model.piece(tok)) else self._unquoted + 1

    def _text(self) -> str:
        return self.rt.detokenize(self.generated)

    def _finish_text(self, reason: str = "stop") -> None:
        """End with the answer written so far, if it is one: ``reason`` says what ended it (``length``: the cap)."""
        text = self._text()
        try:
            value = self.state.value(text)
        except ValueError:
            return self._done(None, text, len(self.generated), "error")
        if "schema" in self.req.fields and not self.compiled.result().holds(value, self.req.fields["schema"]):
            return self._done(None, text, len(self.generated), "error")
        self._done(value, text, len(self.generated), reason, answered=True)

    def _done(self, value: Any, text: str, tokens: int, reason: str, **extra: Any) -> None:
        super()._done(value, text, tokens, reason, forced_tokens=self.forced, **extra)
