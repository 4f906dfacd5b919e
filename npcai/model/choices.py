"""How a decision's options are scored, and how their scores become probabilities.

Each option is the words that complete the answer's lead ("I should" + " chase the thief").
Its score is the log-likelihood of all its tokens, as lm-evaluation-harness scores multiple
choice, not the probability of the first token where the options differ: what makes an
option plausible usually comes later in its text. Measured on npcai's game decisions and on
COPA, PIQA and ARC-Easy (docs/QUALITY.md), two more things help tiny models:

- a prior: each option's log-likelihood under a content-free situation, computed once per
  persona, lead and option set (``PriorCache``), part of which is taken off its score, so
  that options a model likes whatever happens (short, common words) stop winning by default
  (contextual calibration, Zhao et al. 2021; domain-conditional PMI, Holtzman et al. 2021);
- a temperature fitted per model, so that ``probs`` means what it says: an option given 0.7
  is right about 70 % of the time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Hashable

import numpy as np

if TYPE_CHECKING:
    from npcai.model.runtime import Runtime
    from npcai.sidecar.npc import Npc

#: The situation of the prior: says nothing, so the options' scores under it are what the model
#: gives them whatever happens.
CONTENT_FREE = "Nothing happens."
#: How much of the prior comes off an option's score (1 would be full PMI).
PRIOR_WEIGHT = 0.25
#: The temperature of ``probs`` when the catalog has none fitted for a model, and how it varies
#: with the number of options (not at all).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TEMPERATURE_POWER = 0.0


def option_tokens(rt: "Runtime", lead: str, words: list[str]) -> list[list[int]]:
    """Each option's tokens as they follow the lead (a space between them when there is a lead)."""
    sep = " " if lead else ""
    return [rt.text_tokens(sep + w.strip()) or [rt.model.eot] for w in words]


def option_bytes(lead: str, words: list[str]) -> np.ndarray:
    """Each option's length in bytes as it follows the lead (the space included), as ``acc_norm`` counts it."""
    sep = " " if lead else ""
    return np.array([len((sep + w.strip()).encode()) for w in words], dtype=float)


def log_softmax_at(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    """Log-probabilities of ``tokens`` under the full vocabulary (float32 exp, about 0.2 ms on 262k logits)."""
    top = float(logits.max())
    lse = top + float(np.log(np.exp(logits - np.float32(top)).sum(dtype=np.float64)))
    return logits[tokens].astype(np.float64) - lse


def first_tokens(logits: np.ndarray, options: list[list[int]]) -> np.ndarray:
    """Log-probability of each option's first token after the prompt."""
    return log_softmax_at(logits, [o[0] for o in options])


def prior_key(npc: "Npc", lead: str, options: list[list[int]]) -> Hashable:
    return (npc.persona, tuple((e["situation"], e["choice"]) for e in npc.examples), lead,
            tuple(tuple(o) for o in options))


def prior_prompt(rt: "Runtime", npc: "Npc", content_free: str, lead: str) -> list[int]:
    """The decision's prompt with a content-free situation (as the user turn) and no history."""
    return rt.prompt_tokens(npc.persona_chat(("user", content_free)), add_generation_prompt=True, lead=lead)


def temperature_for(temperature: float, power: float, n_options: int) -> float:
    """The temperature of ``probs`` over ``n_options``: the model's (fitted at two options) times
    (n / 2) ** power. Fitted on calibration items, the power is negative: with more options each
    pick is surer than one temperature makes it (docs/QUALITY.md, "Calibration")."""
    return temperature * (n_options / 2) ** power


def probabilities(loglik: np.ndarray, prior: np.ndarray | None, temperature: float,
                  nbytes: np.ndarray | None = None, power: float = 0.0,
                  weights: np.ndarray | tuple[float, ...] | None = None) -> np.ndarray:
    """The probability that the NPC picks each option, at ``temperature_for(temperature, power, n)``.
    With ``nbytes`` (each option's length in bytes) the scores are per byte, as lm-evaluation-harness's
    ``acc_norm``, then scaled by the options' mean length: the same pick as per byte, on the scale
    the temperature was fitted at. ``weights``: how much of each option's prior comes off its score,
    when not ``PRIOR_WEIGHT`` for all (an action's argument combinations take more off: their options
    are compared only with each other, ``action_options.prior_weights``)."""
    weight = PRIOR_WEIGHT if weights is None else np.asarray(weights, dtype=float)
    score = loglik - weight * prior if prior is not None else loglik
    if nbytes is not None:
        score = score / nbytes * float(np.mean(nbytes))
    z = score / temperature_for(temperature, power, len(score))
    p = np.exp(z - z.max())
    return p / p.sum()


def pick(probs: np.ndarray, temperature: float, top_k: int, top_p: float, u: float) -> int:
    """The option an NPC picks: the most probable at temperature 0; else drawn (``u`` uniform in [0, 1))
    from ``probs`` sharpened or flattened by ``temperature``, among the ``top_k`` most probable (0: all)
    whose probability, most probable first, reaches ``top_p`` (the token samplers' rules, over options)."""
    if temperature <= 0:
        return int(np.argmax(probs))
    order = np.argsort(-probs, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    tempered = probs[order] ** (1.0 / temperature)
    tempered /= tempered.sum()
    if top_p < 1.0:  # the smallest head of the ranking whose mass reaches top_p
        keep = int(np.searchsorted(np.cumsum(tempered), top_p, side="left")) + 1
        order, tempered = order[:keep], tempered[:keep] / tempered[:keep].sum()
    return int(order[min(int(np.searchsorted(np.cumsum(tempered), u, side="right")), len(order) - 1)])


class PriorCache:
    """Options' priors by (persona, examples, lead, options): a bounded LRU, one per model."""

    def __init__(self, size: int = 256):
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._size = size

    def get(self, key: Hashable) -> np.ndarray | None:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key: Hashable, prior: np.ndarray) -> None:
        self._items[key] = prior
        while len(self._items) > self._size:
            self._items.popitem(last=False)
