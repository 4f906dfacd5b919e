"""The anchor: a GGUF file scored on multiple choice the way lm-evaluation-harness scores it.

Each option's continuation, " " + option, is scored by its log-likelihood after the context, summed
over its tokens (``acc``), and the same divided by the option's length in characters, the space not
counted (``acc_norm``: lm-evaluation-harness's ``completion_len = len(choice)``).
Tokens are split as lm-evaluation-harness splits them: the context alone, then whatever the
whole text adds. This runs llama-cpp-python's own ``Llama`` directly, not npcai's runtime,
so that npcai's ``decide`` is measured against its model, not against itself.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npcai.model.native import safe_llama_defaults


@dataclass(frozen=True)
class Scored:
    """An item's options as the anchor sees them: summed log-likelihoods and lengths in characters."""

    loglik: tuple[float, ...]
    nchars: tuple[int, ...]

    @property
    def pick(self) -> int:
        return int(np.argmax(self.loglik))

    @property
    def pick_norm(self) -> int:
        return int(np.argmax(np.array(self.loglik) / np.array(self.nchars)))


class Anchor:
    """One model file, loaded through ``llama_cpp.Llama`` with every position's logits kept."""

    def __init__(self, path: Path, threads: int, n_ctx: int = 512):
        import llama_cpp

        self.path = path
        with contextlib.redirect_stderr(io.StringIO()), safe_llama_defaults():
            self._llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                                        n_threads=threads, n_threads_batch=threads, verbose=False)

    def _tokens(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode(), add_bos=True, special=True)

    def score(self, context: str, options: list[str]) -> Scored:
        """Each option scored as the continuation " " + option (lm-evaluation-harness's target delimiter)."""
        llm = self._llm
        ctx = self._tokens(context)
        conts = [self._tokens(context + " " + o)[len(ctx):] for o in options]
        llm.reset()
        llm.eval(ctx)
        loglik = []
        for cont in conts:
            llm.n_tokens = len(ctx)  # the context stays evaluated; eval() drops whatever came after it
            llm.eval(cont)
            rows = np.asarray(llm.scores[len(ctx) - 1:len(ctx) + len(cont) - 1], dtype=np.float64)
            top = rows.max(axis=1, keepdims=True)
            lse = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
            loglik.append(float((rows[np.arange(len(cont)), cont] - lse).sum()))
        return Scored(tuple(loglik), tuple(len(o) for o in options))

    def close(self) -> None:
        self._llm.close()
