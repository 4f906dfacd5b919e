"""The step cost model: how long a model step of N tokens takes, learned from the steps taken."""

from __future__ import annotations

import collections
import statistics

_FEW, _MANY = 4, 16  # steps this short show a step's fixed cost; this long, the cost per token
_WINDOW = 15  # the latest samples of each part; their median is the estimate
_PRIOR_WEIGHT = 2  # the starting values count as this many samples until real ones push them out


class StepCost:
    """What a model step costs: a fixed part (every step reads all the weights once), a part per
    token, and a part per sequence beyond the first, each the median of the latest steps that show it
    best (one sequence's few tokens, one sequence's many, several sequences').

    A cost per token alone made short steps look almost free: on SmolLM2 a 2-token step was
    taken for 5 ms and took 21, so dialogue steps squeezed in ahead of a decision that then
    missed its deadline.

    The part per sequence: every NPC's cells are a KV stream of their own, and llama.cpp attends
    to each stream apart, so six streams' next tokens cost 36 ms where one stream's six-token chunk
    costs 23. Taken for the chunk, such a step was let in ahead of a waiting decision whose slack it
    then overran (8-18 of 150 decisions missed their deadline that way in a mixed-load run).

    Medians, not running means: when another process takes the CPU, llama.cpp's compute threads
    wait on each other at every barrier, and a 1-token step can take 0.5-3 s. Averaged in, one such
    step had the fixed part at 118-667 ms for seconds afterwards, and every decision was shed as
    hopeless while the machine was fast again. Slowness that lasts (a busy machine, fewer threads)
    still moves a median after about half a window of steps.
    """

    def __init__(self, base_ms: float = 8.0, token_ms: float = 2.0, lane_ms: float = 3.0):
        self.base_ms, self.token_ms, self.lane_ms = base_ms, token_ms, lane_ms
        self._bases = collections.deque([base_ms] * _PRIOR_WEIGHT, maxlen=_WINDOW)
        self._per_token = collections.deque([token_ms] * _PRIOR_WEIGHT, maxlen=_WINDOW)
        self._per_lane = collections.deque([lane_ms] * _PRIOR_WEIGHT, maxlen=_WINDOW)

    def estimate_s(self, n_tokens: int, lanes: int = 1) -> float:
        """A step of ``n_tokens`` in all, in ``lanes`` sequences."""
        return (self.base_ms + self.token_ms * n_tokens + self.lane_ms * max(0, lanes - 1)) / 1000

    def learn(self, seconds: float, n_tokens: int, lanes: int = 1) -> None:
        ms = seconds * 1000
        if lanes > 1:
            self._per_lane.append(max(0.0, (ms - self.base_ms - self.token_ms * n_tokens) / (lanes - 1)))
            self.lane_ms = statistics.median(self._per_lane)
        elif n_tokens <= _FEW:
            self._bases.append(max(0.0, ms - self.token_ms * n_tokens))
            self.base_ms = statistics.median(self._bases)
        elif n_tokens >= _MANY:
            self._per_token.append(max(0.05, (ms - self.base_ms) / n_tokens))
            self.token_ms = statistics.median(self._per_token)
