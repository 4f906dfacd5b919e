"""``decide`` with choices: every option's whole text scored by the model, then calibrated."""

from __future__ import annotations

import time

import numpy as np

from npcai.errors import Overloaded
from npcai.model import choices
from npcai.model.runtime import Lane
from npcai.sidecar.jobs.decision import Decision, decide_prompt
from npcai.sidecar.npc import DEFAULT_LEAD, Npc


class ChoiceDecideJob(Decision):
    """``decide`` with choices: every option's whole text scored by the model, then calibrated.

    The situation is asked as a question and the answer starts with a lead ("The sensible thing to
    do is to", unless the request gives its own) that each option completes. The step that
    evaluates the situation gives every option's first token; one more step evaluates all
    options' other tokens together, each in a branch of the decision's sequence,
    padded to one length in consecutive sequence ids so that llama.cpp takes them in a single
    sub-batch. So every token of an option counts, not only the first one where the
    options differ. Scoring and calibration are ``choices.py``'s.
    """

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx, npc)
        self.choices: list[str] = req.choices
        self.lead = (req.lead if req.lead is not None else DEFAULT_LEAD).strip()
        words = req.descriptions or {}
        self.options = choices.option_tokens(rt, self.lead, [words.get(c, c) for c in self.choices])
        self.loglik = np.zeros(len(self.choices))
        self.prior_key = choices.prior_key(npc, self.lead, self.options)
        self.prior: np.ndarray | None = rt.choice_priors.get(self.prior_key)
        self._new_prior = self.prior is None  # computed by this job, then cached
        self._waiting: dict[int, tuple[np.ndarray, int | None]] = {}  # id(lane) -> (its scores, option or None)

    def start(self) -> None:
        self._start_fork(self.lead, room=max(len(o) for o in self.options) + 1)
        self._waiting[id(self.lanes[0])] = (self.loglik, None)
        if self._new_prior:  # the options' prior under a content-free situation, once per option set
            content_free = decide_prompt(self.req, choices.CONTENT_FREE)
            try:
                lane = self._fork(self.rt.fork(self._kv, choices.prior_prompt(self.rt, self.npc, content_free,
                                                                              self.lead)))
            except Overloaded:  # every KV sequence is busy: this decision goes without its prior
                self._new_prior = False
                return
            self.prior = np.zeros(len(self.choices))
            self.lanes.append(self._count_prompt(lane))
            self._waiting[id(lane)] = (self.prior, None)

    def advance(self) -> None:
        for lane in [lane for lane in self.lanes if lane.ready]:
            scores, option = self._waiting.pop(id(lane))
            if option is None:
                self._branch(lane, scores)
                continue
            scores[option] += choices.later_tokens(self.rt, lane.rows, self.options[option])
            self._temp_seqs.remove(lane.seq)  # every option lane is a branch: done with it
            self.rt.release(lane.seq)
        self.lanes = [lane for lane in self.lanes if id(lane) in self._waiting]
        if not self._waiting:
            self._pick()

    def _branch(self, lane: Lane, scores: np.ndarray) -> None:
        """Score every option's first token from ``lane``'s logits, and queue the rest of each option
        in a branch of ``lane``: consecutive sequence ids, all padded to one length, so that the
        next step evaluates them as one sub-batch (on SmolLM2, a 6-way choice's option step took
        about twice as long when its branches sat in scattered ids)."""
        scores += choices.first_tokens(self.rt.logits(lane.rows[-1]), self.options)
        longer = [i for i, tokens in enumerate(self.options) if len(tokens) > 1]
        if not longer:
            return
        width = max(len(self.options[i]) for i in longer) - 1
        branches = self.rt.branches(lane, [choices.padded(self.options[i][:-1], width) for i in longer])
        if branches is None:
            raise Overloaded("no KV sequence free to score these choices")
        for i, branch in zip(longer, branches):
            self.lanes.append(self._fork(branch))
            self._waiting[id(branch)] = (scores, i)

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
