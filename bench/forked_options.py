"""Options scored as lm-evaluation-harness scores multiple choice, for the research scripts beside this
one (choice_framings.py, public_framings.py): the prompt evaluated once, each option forked after it in a
sequence of its own, all options' tokens in one batch; an option's score is the summed log-probability
of its tokens. Run through llama.cpp directly (npcai.model.native), not through the sidecar."""

from __future__ import annotations

from npcai.model import catalog
from npcai.model.choices import log_softmax_at
from npcai.model.native import Batch, Context, Model


class ForkedScorer:
    """One catalog model and a context of ``n_seq`` sequences: the prompt in sequence 0, option k in k + 1."""

    def __init__(self, name: str, n_seq: int = 8, cells_per_seq: int = 768):
        self.m = Model(catalog.resolve(name))
        self.ctx = Context(self.m, n_ctx=n_seq * cells_per_seq, n_batch=512, n_seq=n_seq, threads=2,
                           flash_attn=False)
        self.b = Batch(512)

    def score_tokens(self, prompt: list[int], options: list[list[int]]) -> list[float]:
        """Each option's summed log-probability after ``prompt`` (at most ``n_seq - 1`` options)."""
        m, c, b = self.m, self.ctx, self.b
        for s in range(len(options) + 1):
            c.seq_rm(s)
        b.clear()
        for i, t in enumerate(prompt):
            b.add(t, i, 0, i == len(prompt) - 1)
        assert c.decode(b) == 0
        first = log_softmax_at(c.logits(b.n - 1, m.n_vocab), [o[0] for o in options])
        for k in range(len(options)):
            c.seq_fork(0, k + 1, len(prompt))
        b.clear()
        rows = [[b.add(t, len(prompt) + j, k + 1, True) for j, t in enumerate(o[:-1])]
                for k, o in enumerate(options)]
        if b.n:
            assert c.decode(b) == 0
        return [float(first[k] + sum(log_softmax_at(c.logits(r, m.n_vocab), [o[j + 1]])[0] for j, r in enumerate(rs)))
                for k, (o, rs) in enumerate(zip(options, rows))]
