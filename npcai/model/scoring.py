"""The option scorer: every option of a decision scored in one model step, in a small unified KV cache.

A choice decision scores each option's whole text after the situation (``choices.py``). In the
runtime's main cache every sequence has its own KV stream, so each option needed a copy of the
whole stream (about 4-8 ms each on SmolLM2) and a second step after the situation's. Here all
sequences share one cache, where a token may belong to several sequences at once: the situation
is evaluated once, tagged with every option's sequence, and each option's tokens follow it in
its own sequence, all in one batch (tree attention, as llama.cpp's parallel example shares a
system prompt); options that start alike (an action's argument combinations) share the cells of
their common start too. The NPC's persona and history are not evaluated again: its cells are copied
over from the main cache (``moved_state``), only when they are not here already.

Measured on SmolLM2 (2 threads, 136-token persona, 6 options; docs/PERFORMANCE.md): situation and
options in one step took 1.17x the situation's step alone; the two-step, copy-per-option way took
1.62x. The scores equal those of each option scored in a sequence of its own, within the
half-precision rounding of llama.cpp's CPU flash attention (under 0.3 nats; tests/test_scoring.py).

A role with a LoRA adapter has a scorer of its own, on the adapter's merged weights (``adapter.py``), for
the trees of that role's decisions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npcai.errors import ModelError
from npcai.model.adapter import LoraAdapter
from npcai.model.choices import first_tokens, log_softmax_at
from npcai.model.kv import KvSeq, Lane
from npcai.model.native import Batch, Context, Model, moved_state

#: Cells of the scorer's cache beyond one NPC's prefix: a situation and all its options' tokens.
TREE_ROOM = 2048
#: Tokens llama.cpp computes at once within one of its steps (a tree of 2,048 tokens goes in 512s).
UBATCH = 512


@dataclass
class OptionTree(Lane):
    """A lane for the option scorer: ``stems`` (whole prompts, each ending in the answer's lead) and
    the ``options`` that may follow each. ``pending`` holds every token the step will evaluate, so
    the scheduler counts it like any other lane; after the step, ``scores[i][k]`` is the
    log-likelihood of option ``k`` after stem ``i``."""

    stems: list[list[int]] = field(default_factory=list)
    options: list[list[int]] = field(default_factory=list)
    source: KvSeq | None = None  # the NPC whose evaluated prefix is copied from the main cache
    keep: int = 0  # how much of the stems' common start to keep cached here (the NPC's persona and history)
    adapter: LoraAdapter | None = None  # the deciding role's LoRA adapter, if it has one: whose scorer scores it
    scores: list[np.ndarray] = field(default_factory=list)


def tree_cells(stems: list[list[int]], options: list[list[int]]) -> int:
    """Cells a tree needs, and tokens it evaluates at most (nothing of its stems cached)."""
    root = _common_prefix_all(stems)
    return root + sum(len(s) - root for s in stems) + len(stems) * option_cells(options)


def option_cells(options: list[list[int]]) -> int:
    """Tokens the options add after each stem: every start they share once (``_add_options``), and
    never an option's last token, whose probability the token before it gives.

    That is the number of distinct proper prefixes of the options, counted in sorted order: each option
    adds those of its own that the option before it lacks (no earlier one shares more with it). Linear in
    the options' tokens: a set of every prefix was quadratic, and two options of 20,000 tokens took
    4 GB and 9 s of the engine thread before they could be refused as too long."""
    cells, before = 0, None
    for option in sorted(options):
        shared = 0 if before is None else max(0, min(common_prefix(before, option), len(before) - 1))
        cells += max(0, len(option) - 1 - shared)
        before = option
    return cells


class OptionScorer:
    """A unified KV cache beside a runtime's main one, for option trees (one per step, one model step each).

    ``model`` is the runtime's own, or an adapter's merged weights, or the runtime's own with ``lora`` (an
    adapter's handle) applied at run time: the NPC's cells copied over from the main cache were evaluated by
    the model alone, as a run-time adapter would have left them."""

    def __init__(self, model: Model, *, prefix_cells: int, max_seqs: int, threads: int,
                 flash_attn: bool | None, main: Context, lora=None):
        n_ctx = prefix_cells + TREE_ROOM
        self.ctx = Context(model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=UBATCH, n_seq=max_seqs, threads=threads,
                           flash_attn=flash_attn, unified=True)
        if lora is not None:
            self.ctx.apply_lora(lora)
        self.batch = Batch(n_ctx, n_seq_max=max_seqs)
        self.max_seqs = max_seqs
        self.capacity = n_ctx
        self._main = main
        # The main cache's V lies otherwise (flash attention on there, off here): moved cells are relaid out.
        self._relayout = None not in (main.v_transposed, self.ctx.v_transposed) and \
            main.v_transposed != self.ctx.v_transposed
        self._n_vocab = model.n_vocab
        self._buffers = [np.empty(0, dtype=np.uint8), np.empty(0, dtype=np.uint8)]  # a saved state, and it moved
        self._cached: list[int] = []  # the tokens sequence 0 holds: the last tree's NPC prefix
        self.stats = {"trees": 0, "prefix_loads": 0, "loaded_cells": 0}

    def fits(self, stems: list[list[int]], options: list[list[int]]) -> bool:
        return len(stems) * len(options) <= self.max_seqs and tree_cells(stems, options) <= self.capacity

    def evaluate(self, tree: OptionTree) -> int:
        """Score ``tree`` in one step. Returns llama_decode's code (0 on success)."""
        if self.ctx.threads != self._main.threads:
            self.ctx.set_threads(self._main.threads)
        stems, options = tree.stems, tree.options
        root = _common_prefix_all(stems)
        # Sequence 0 holds as much of the first stem (the decision's prompt) as is evaluated anywhere: the
        # NPC's persona and history. Another stem (the options' content-free prior: the persona, no history)
        # shares only its common start with it. Loading no more than all stems share had a first decision
        # over new options evaluate the NPC's whole history again (198 tokens where 94 were counted).
        have = self._prefix(tree)
        shared = [have] + [min(have, common_prefix(s, stems[0]), len(s) - 1) for s in stems[1:]]
        n_opt = len(options)
        groups = [list(range(i * n_opt, (i + 1) * n_opt)) for i in range(len(stems))]
        every = [s for g in groups for s in g]
        for seqs, n in zip(groups, shared):
            for seq in seqs:
                if seq != 0:
                    self.ctx.seq_copy(0, seq, n)
        b = self.batch
        b.clear()
        for pos in range(have, root):  # the stems' common part: every sequence attends to it
            b.add_shared(stems[0][pos], pos, every, False)
        last_rows, option_rows = [], []
        for stem, seqs, n in zip(stems, groups, shared):
            start = max(root, n)
            rows_here = [b.add_shared(stem[pos], pos, seqs, pos == len(stem) - 1) for pos in range(start, len(stem))]
            last_rows.append(rows_here[-1])  # never empty: the cached prefix stops before the stems' last token
            option_rows.append(_add_options(b, len(stem), options, seqs))
        rc = self.ctx.decode(b)
        for seq in every[1:]:
            self.ctx.seq_rm(seq)
        if rc != 0:
            self.ctx.seq_rm(0)
            self._cached = []
            return rc
        self.ctx.seq_rm(0, tree.keep)
        self._cached = stems[0][:tree.keep]
        tree.scores = [self._scores(last, rows, options) for last, rows in zip(last_rows, option_rows)]
        tree.pending = []
        tree.rows = last_rows
        self.stats["trees"] += 1
        return 0

    def evaluated(self, stem: list[int], source: KvSeq | None) -> int:
        """How much of ``stem`` a tree would find evaluated, here or in ``source`` (the NPC's cells, live
        or parked), short of its last token: what a decision's step will not have to evaluate.

        Counting the NPC's live cells alone had a decision whose NPC was parked (another NPC's stream
        took its sequence) look like its whole persona: a 33-token step estimated at 96 tokens, which
        the engine shed as hopeless, decision after decision, although this cache still held it."""
        limit = len(stem) - 1
        here = min(common_prefix(self._cached, stem), limit)
        return max(here, _source_prefix(source, stem, limit))

    def _prefix(self, tree: OptionTree) -> int:
        """Make sequence 0 hold as much of the first stem as is evaluated anywhere, short of its last token
        (evaluated here for its logits); returns how much."""
        limit = len(tree.stems[0]) - 1
        here = min(common_prefix(self._cached, tree.stems[0]), limit)
        kv = tree.source
        there = _source_prefix(kv, tree.stems[0], limit)
        if there > here:
            self.ctx.seq_rm(0)
            if not self.ctx.seq_load(0, self._moved(kv)):
                self._cached = []
                self.ctx.seq_rm(0)
                return 0
            self._cached = list(kv.tokens if kv.seq is not None else kv.parked[1])
            self.stats["prefix_loads"] += 1
            self.stats["loaded_cells"] += len(self._cached)
            here = there
        self.ctx.seq_rm(0, here)
        del self._cached[here:]
        return here

    def _moved(self, kv: KvSeq) -> np.ndarray:
        """The NPC's cells (in the main cache, or parked) as this cache reads them; empty if they cannot be
        (then they are evaluated here). Both buffers are kept for the next move."""
        try:
            saved = self._main.seq_save(kv.seq, self._buffers[0]) if kv.seq is not None else kv.parked[0]
            moved = moved_state(saved, self.ctx.v_transposed if self._relayout else None, self._buffers[1])
        except ModelError:
            return np.empty(0, dtype=np.uint8)
        if isinstance(saved, np.ndarray):
            self._buffers[0] = saved.base if saved.base is not None else saved
        self._buffers[1] = moved.base if moved.base is not None else moved
        return moved

    def _scores(self, last: int, rows: list[list[int]], options: list[list[int]]) -> np.ndarray:
        out = first_tokens(self.ctx.logits(last, self._n_vocab), options)
        wanted: dict[int, list[tuple[int, int]]] = {}  # row -> (option, next token): a shared row is read once
        for k, (opt, opt_rows) in enumerate(zip(options, rows)):
            for j, row in enumerate(opt_rows):
                wanted.setdefault(row, []).append((k, opt[j + 1]))
        for row, asks in wanted.items():
            logp = log_softmax_at(self.ctx.logits(row, self._n_vocab), [tok for _, tok in asks])
            for (k, _), lp in zip(asks, logp):
                out[k] += lp
        return out

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()


def _add_options(b: Batch, start: int, options: list[list[int]], seqs: list[int]) -> list[list[int]]:
    """Add the options after a stem ending at ``start``, each in its sequence; a start that several
    options share ("give the shield", "give the sword") is added once, in all their sequences.
    Returns each option's rows: the logits of its tokens but the last, which predict the next.

    The starts are the nodes of a trie (node 0: the stem's end), walked token by token: keyed by whole
    prefixes, they took time and memory quadratic in an option's length."""
    child: dict[tuple[int, int], int] = {}  # (node, next token) -> node
    node_seqs: list[list[int]] = [[]]  # the sequences that share each start
    paths = []
    for opt, seq in zip(options, seqs):
        node, path = 0, []
        for tok in opt[:-1]:
            node = child.setdefault((node, tok), len(node_seqs))
            if node == len(node_seqs):
                node_seqs.append([])
            node_seqs[node].append(seq)
            path.append(node)
        paths.append(path)
    row_of: dict[int, int] = {}
    out = []
    for opt, path in zip(options, paths):
        rows = []
        for j, node in enumerate(path):
            if node not in row_of:
                row_of[node] = b.add_shared(opt[j], start + j, node_seqs[node], True)
            rows.append(row_of[node])
        out.append(rows)
    return out


def _source_prefix(kv: KvSeq | None, stem: list[int], limit: int) -> int:
    """How much of ``stem`` an NPC's cells hold (live, or parked in host memory), at most ``limit``."""
    if kv is None:
        return 0
    tokens = kv.parked[1] if kv.seq is None and kv.parked is not None else kv.tokens
    return min(common_prefix(tokens, stem), limit)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _common_prefix_all(stems: list[list[int]]) -> int:
    """How much all stems share, short of any stem's last token (each stem's own logits come from it)."""
    n = min(len(s) for s in stems) - 1
    for s in stems[1:]:
        n = min(n, common_prefix(stems[0], s))
    return n
