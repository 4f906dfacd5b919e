"""``decide`` with choices: every option's whole text scored by the model, then calibrated."""

from __future__ import annotations

import time

import numpy as np

from npcai.errors import TooLarge
from npcai.model import choices
from npcai.model.scoring import TREE_ROOM, OptionScorer, OptionTree, common_prefix, option_cells
from npcai.sidecar.admission import DEFAULT_ROLES
from npcai.sidecar.jobs.base import IDLE, fit
from npcai.sidecar.jobs.decision import DECIDE_DEFAULTS, Decision, decide_prompt
from npcai.sidecar.npc import DEFAULT_LEAD, Npc


class ChoiceDecideJob(Decision):
    """``decide`` with choices: every option's whole text scored by the model, then calibrated.

    The situation is asked as a question and the answer starts with a lead ("I should", unless
    the request gives its own) that each option completes. One step scores every
    token of every option, not only the first one where the options differ: an option tree in the
    option scorer's cache, which starts from the NPC's evaluated persona and history (``scoring.py``).
    The first decision over an option set also scores the options under a content-free situation,
    in the same step: their prior. Scoring and calibration are ``choices.py``'s. A role with a LoRA
    adapter (``--lora``) has its trees scored through it, at its adapter's temperature.
    """

    def __init__(self, req, rt, emit, npc_ctx, npc: Npc):
        super().__init__(req, rt, emit, npc_ctx, npc)
        self.choices: list[str] = req.choices
        self.lead = (req.lead if req.lead is not None else DEFAULT_LEAD).strip()
        words = req.descriptions or {}
        self.options = choices.option_tokens(rt, self.lead, [words.get(c, c) for c in self.choices])
        self.nbytes = (choices.option_bytes(self.lead, [words.get(c, c) for c in self.choices])
                       if req.per_byte else None)
        self.loglik = np.zeros(len(self.choices))
        role = req.role or DEFAULT_ROLES["decide"]
        self.adapter = rt.adapters.get(role)
        self.probs_temperature, self.probs_temperature_power = rt.choice_calibration(role)
        self.prior_key = (self.adapter and self.adapter.name, choices.prior_key(npc, self.lead, self.options))
        self.prior: np.ndarray | None = rt.choice_priors.get(self.prior_key)
        self._new_prior = self.prior is None  # computed by this job, then cached

    def start(self) -> None:
        target = fit(self.npc, self.rt, ("user", decide_prompt(self.req)), 1, self.npc_ctx, self.lead)
        stems = [target]
        if self._new_prior:  # the options' prior under a content-free situation, once per option set
            prior = self._prior_prompt()
            if prior != target:
                stems.append(prior)
        scorer = self.rt.scorer(self.adapter)
        if len(stems) > 1 and not scorer.fits(stems, self.options):
            stems, self._new_prior = stems[:1], False  # too big to score with its prior: goes without it
        if not scorer.fits(stems, self.options):
            raise TooLarge("these options are too many or too long to score together "
                           f"(at most {scorer.max_seqs // 2} options and {TREE_ROOM} tokens of situation and options)")
        self.lanes = [self._count_prompt(self._tree(scorer, stems))]

    def _prior_prompt(self) -> list[int]:
        return choices.prior_prompt(self.rt, self.npc, decide_prompt(self.req, choices.CONTENT_FREE), self.lead)

    def _tree(self, scorer: OptionScorer, stems: list[list[int]]) -> OptionTree:
        """The option tree of ``stems``, the first of which the NPC's cells start (its prefix is kept cached)."""
        first = stems[0]
        keep = self.rt.prefix_tokens(self.npc.chat())  # the NPC's persona and history: kept cached for its next decision
        cached = scorer.evaluated(first, self._kv)
        pending = len(first) - cached + sum(len(s) - common_prefix(s, first) for s in stems[1:])
        pending += len(stems) * option_cells(self.options)  # shared starts count once, as evaluated
        return OptionTree(seq=-1, pos=cached, pending=[0] * pending, all_logits=True, stems=stems,
                          options=self.options, source=self._kv,
                          keep=len(keep) if first[:len(keep)] == keep else 0, adapter=self.adapter)

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
        probs = choices.probabilities(self.loglik, self.prior, self.probs_temperature, self.nbytes,
                                      self.probs_temperature_power, self.req.prior_weights)
        u = self.rng.random() if self.temperature > 0 else 0.0  # a pick at temperature 0 draws nothing
        pick = choices.pick(probs, self.temperature, self.param("top_k", DECIDE_DEFAULTS),
                            float(self.param("top_p", DECIDE_DEFAULTS)), u)
        self.first_token_at = time.monotonic()
        choice = self.choices[pick]
        self._done(choice, choice, len(self.options[pick]), "stop",
                   probs={c: float(p) for c, p in zip(self.choices, probs)})


class ChoicePriorJob(ChoiceDecideJob):
    """In spare steps, an option set's content-free prior alone, cached for the NPC's first decision over
    it: that decision then scores its own prompt only (a first action decision after a line cost about
    2x a later one). ``req`` is a ``decide`` with those choices and no situation of its own to score.
    It replies to no one, and gives way like all thinking ahead."""

    urgency = IDLE
    pins_npc = False  # it reads the NPC's cells, parked or not, and never keeps them resident while it waits

    def start(self) -> None:
        if self.rt.choice_priors.get(self.prior_key) is not None:  # a decision got there first
            return self.finish(None)
        prior = self._prior_prompt()
        scorer = self.rt.scorer(self.adapter)
        if not scorer.fits([prior], self.options):
            return self.finish(None)
        self.lanes = [self._tree(scorer, [prior])]  # keeps the persona cached, when the NPC has not talked yet

    def advance(self) -> None:
        self.rt.choice_priors.put(self.prior_key, self.lanes[0].scores[0])
        self.finish(None)
