"""The step cost model: how long a model step of N tokens takes, learned from the steps taken."""

from __future__ import annotations

_FEW, _MANY = 4, 16  # steps this short show a step's fixed cost; this long, the cost per token


class StepCost:
    """What a model step costs: a fixed part (every step reads all the weights once) plus a part
    per token, each learned from the steps that show it best.

    A cost per token alone made short steps look almost free: on SmolLM2 a 2-token step was
    taken for 5 ms and took 21, so dialogue steps squeezed in ahead of a decision that then
    missed its deadline.
    """

    def __init__(self, base_ms: float = 8.0, token_ms: float = 2.0):
        self.base_ms, self.token_ms = base_ms, token_ms

    def estimate_s(self, n_tokens: int) -> float:
        return (self.base_ms + self.token_ms * n_tokens) / 1000

    def learn(self, seconds: float, n_tokens: int) -> None:
        ms = seconds * 1000
        if n_tokens <= _FEW:
            self.base_ms += 0.2 * (max(0.0, ms - self.token_ms * n_tokens) - self.base_ms)
        elif n_tokens >= _MANY:
            self.token_ms += 0.2 * (max(0.05, (ms - self.base_ms) / n_tokens) - self.token_ms)
