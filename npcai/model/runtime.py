"""The runtime: one loaded model, its KV cache, and the batched model step.

A Runtime owns a llama.cpp context whose KV cache holds many sequences, each in its
own stream (one per resident NPC plus short-lived forks for decisions). Each step evaluates
one batch mixing every active request's tokens; ``Lane``s say which tokens of
which sequence go in and where their logits come back. Choice decisions' option trees go to
the option scorer's small unified cache instead (``scoring.py``), in the same step.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from llguidance.llamacpp import lltokenizer_from_vocab

from npcai.errors import ModelError, Overloaded
from npcai.model import choices, penalties, vocab_masks
from npcai.model.adapter import AdapterSpec, LoraAdapter
from npcai.model.constraints import ConstraintCompiler
from npcai.model.cost import StepCost
from npcai.model.kv import KvSeq, Lane, SeqPool
from npcai.model.lines import SENTENCE_ENDS
from npcai.model.native import Batch, Context, Model
from npcai.model.sampling import NO_MASK, sample_token
from npcai.model.scoring import OptionScorer, OptionTree
from npcai.model.template import ChatTemplate


@dataclass(frozen=True)
class StepResult:
    """What one batched step did, in words rather than llama_decode's codes.

    ``ok``: every lane advanced; ``kv_full``: no room in the KV cache (llama_decode 1); ``aborted``: the
    abort callback stopped it mid-way (2); ``failed``: any other code. Only ``ok`` changes the lanes.
    """

    status: str
    code: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


STEP_OK = StepResult("ok")
_KV_FULL, _ABORTED = StepResult("kv_full", 1), StepResult("aborted", 2)
_QUOTED = re.compile(rb'(?="([^"]*)")')  # every run between two quotes, overlapping ones too


class Runtime:
    """One model, served by role(s); evaluates batches and hands out logits."""

    def __init__(self, path: Path, *, name: str, n_ctx: int, n_seq: int, n_batch: int, threads: int,
                 grammar_dir: Path, flash_attn: bool | None = None, scorer_flash_attn: bool | None = None,
                 park_bytes: int = 0, scoring_path: Path | None = None,
                 choice_temperature: float = choices.DEFAULT_TEMPERATURE,
                 choice_temperature_power: float = choices.DEFAULT_TEMPERATURE_POWER):
        self.name = name
        self.model = Model(path)
        # Option trees are scored on these weights (``catalog.scoring_weights``: a copy in the type this CPU
        # evaluates batches fastest in), or on the model's own; loaded now, not at the first decision.
        self.scoring_model = self.model
        if scoring_path is not None:
            try:
                self.scoring_model = Model(scoring_path)
            except ModelError as exc:  # a copy damaged in the cache: an optional speed-up, not a reason to stop
                print(f"note: decisions are scored on {path.name}: {exc} (delete the copy to have it made again)",
                      file=sys.stderr, flush=True)
        self.n_vocab = self.model.n_vocab
        self.template = ChatTemplate(self.model)
        self.ctx = Context(self.model, n_ctx=n_ctx, n_batch=n_batch, n_seq=n_seq, threads=threads,
                           flash_attn=flash_attn)
        self.n_batch = n_batch
        self.batch = Batch(n_batch)
        self.pool = SeqPool(self.ctx, n_seq, park_bytes)
        self.compiler = ConstraintCompiler(lltokenizer_from_vocab(self.model.vocab, n_vocab=self.n_vocab),
                                           grammar_dir)
        self.mask = np.zeros((self.n_vocab + 31) // 32, dtype=np.int32)
        sample_token(np.zeros(8, dtype=np.float32), NO_MASK, 0.5, 4, 0.9, 0.5)  # compile (or load) the kernels now
        self.stats = {"steps": 0, "tokens": 0, "compute_ms": 0.0, "aborted_steps": 0}
        self.cost = StepCost()
        # An option tree's token costs more than a prompt's: every one of them yields logits (SmolLM2: a
        # 33-token choice step 80 ms, 2.2 ms a token, against 2.0 for a dialogue chunk): a decision taken
        # for a chunk left too little room for the dialogue step let in ahead of it.
        self.tree_cost = StepCost(token_ms=2.4)
        self.sentence_end_tokens = sorted({toks[0] for text in SENTENCE_ENDS
                                           if len(toks := self.text_tokens(text)) == 1})
        # Which tokens are digits, and which hold a double quote: a scan of the vocabulary (0.4 s on
        # Gemma's 262k, once per model file: then cached on disk), off the start-up path; with the tables of
        # quote tokens a JSON decision reads (3-10 ms on Gemma), so that the first one does not pay for them.
        self._vocab_masks = self.compiler.run_in_background(self._scan_vocabulary)
        self.choice_priors = choices.PriorCache()  # options' priors for decisions, by option set
        self.choice_temperature = choice_temperature  # probs' temperature, fitted per model
        self.choice_temperature_power = choice_temperature_power  # and how it varies with the number of options
        self._scorer_flash_attn = flash_attn if scorer_flash_attn is None else scorer_flash_attn
        self._scorers: dict[LoraAdapter | None, OptionScorer] = {}  # by adapter: the model's own, and each adapter's
        self.adapters: dict[str, LoraAdapter] = {}  # role -> the LoRA adapter of its choice decisions

    #: Sequences the option scorer holds: an option set of up to 64, under the situation and under its prior.
    SCORER_SEQS = 128

    def scorer(self, adapter: LoraAdapter | None = None) -> OptionScorer:
        """The option scorer of the model alone (on its scoring weights), or through ``adapter`` (its merged
        weights, or the model with it applied at run time), made at its first choice decision (its cache is
        about a quarter of the main one)."""
        scorer = self._scorers.get(adapter)
        if scorer is None:
            scorer = self._scorers[adapter] = OptionScorer(
                adapter.model if adapter else self.scoring_model, prefix_cells=self.ctx.n_ctx // self.ctx.n_seq,
                max_seqs=self.SCORER_SEQS, threads=self.ctx.threads, flash_attn=self._scorer_flash_attn,
                main=self.ctx, lora=adapter.handle if adapter else None)
        return scorer

    @property
    def digit_mask(self) -> np.ndarray:
        """The tokens that are all digits, as a packed bitmask (see ``penalties.forbid``)."""
        return self._vocab_masks.result()["digits"]

    @property
    def quote_mask(self) -> np.ndarray:
        """The tokens that hold an unescaped double quote, which in JSON ends a string (see ``penalties.prefer``):
        not ``\\"``, which a pattern may allow inside one (JSONSchemaBench: a string of escaped quotes ran to the cap)."""
        return self._vocab_masks.result()["quotes"]

    @property
    def quote_tokens(self) -> np.ndarray:
        """``quote_mask``'s tokens as ids (the candidates for closing a JSON key; ``json_keys``)."""
        return self._vocab_masks.result()["quote_tokens"]

    @property
    def string_end_mask(self) -> np.ndarray:
        """The tokens that end a JSON string and begin nothing more (``penalties.json_string_end``): the way out
        of a string past ``soft_max_tokens``."""
        return self._vocab_masks.result()["string_end"]

    @property
    def quoted_runs(self) -> dict[int, frozenset[bytes]]:
        """For each token that holds two double quotes or more, the runs of bytes between them (``"name"``,
        ``""``): what it may write as a whole JSON key at once (``json_keys``)."""
        return self._vocab_masks.result()["quoted_runs"]

    def _scan_vocabulary(self) -> dict[str, Any]:
        masks = vocab_masks.masks_for(self.model)
        quotes = np.flatnonzero(np.unpackbits(masks["quotes"].view(np.uint8), bitorder="little"))
        pieces = {tok: self.model.piece(tok) for tok in quotes.tolist()}
        runs = ((tok, frozenset(_QUOTED.findall(piece))) for tok, piece in pieces.items())
        return {**masks, "quote_tokens": quotes, "quoted_runs": {tok: inner for tok, inner in runs if inner},
                "string_end": penalties.token_mask(self.n_vocab, [t for t, piece in pieces.items()
                                                                  if penalties.json_string_end(piece)])}

    @property
    def close_mask(self) -> np.ndarray:
        """The tokens that start with ``]`` or ``}``: outside a JSON string, the way out of an array or object."""
        return self._vocab_masks.result()["closers"]

    def estimate_s(self, n_tokens: int, lanes: int = 1, *, tree: bool = False) -> float:
        """What a step of ``n_tokens`` in ``lanes`` sequences is expected to cost, by the steps measured so far;
        ``tree``: a step that scores an option tree, every token's logits (a choice decision's)."""
        return (self.tree_cost if tree else self.cost).estimate_s(n_tokens, lanes)

    def learn_cost(self, seconds: float, n_tokens: int, lanes: int = 1, *, tree: bool = False) -> None:
        """Refine the estimate with a step that completed."""
        (self.tree_cost if tree else self.cost).learn(seconds, n_tokens, lanes)

    def add_adapter(self, spec: AdapterSpec) -> None:
        """Load ``spec``'s LoRA adapter for its role's choice decisions (``adapter.py``)."""
        self.adapters[spec.role] = LoraAdapter(self.model, spec, self.name)

    def choice_calibration(self, role: str) -> tuple[float, float]:
        """(temperature, power) of ``probs`` for a role's choices (``choices.temperature_for``): its adapter's
        temperature when it has one fitted (a single one, fitted on the adapter's validation items), else
        the model's, which varies with the number of options."""
        adapter = self.adapters.get(role)
        if adapter is not None and adapter.spec.choice_temperature is not None:
            return adapter.spec.choice_temperature, 0.0
        return self.choice_temperature, self.choice_temperature_power

    def scoring_weights(self, role: str) -> str:
        """The file a role's choice decisions are scored on: its adapter merged into the model, the model's
        scoring copy, or the model's own file (also where an adapter is applied at run time)."""
        adapter = self.adapters.get(role)
        return (adapter.model if adapter else self.scoring_model).path.name

    def describe(self, roles: list[str]) -> list[dict]:
        return [{"role": r, "name": self.name, "n_ctx": self.ctx.n_ctx, "n_vocab": self.n_vocab,
                 "choice_temperature": temperature, "choice_temperature_power": power,
                 "lora": self.adapters[r].name if r in self.adapters else None,
                 "scoring_weights": self.scoring_weights(r)}
                for r in roles for temperature, power in [self.choice_calibration(r)]]

    # --- prompts ---------------------------------------------------------------
    def prompt_tokens(self, messages: list[tuple[str, str]], add_generation_prompt: bool, lead: str = "") -> list[int]:
        """The chat rendered with the model's template, then ``lead``: the words the answer starts with. Only the
        template's scaffolding makes control tokens; the messages' texts and the lead are plain text."""
        return self.template.tokens([*self.template.pieces(messages, add_generation_prompt), (lead, False)])

    def prefix_tokens(self, messages: list[tuple[str, str]]) -> list[int]:
        """Tokens every later prompt of this chat starts with: the render up to where a next
        user line would begin. (Rendering the messages alone is not that: templates without a
        system role, like Gemma's, only emit the persona together with a user turn.)"""
        pieces = self.template.pieces([*messages, ("user", "next")], False)
        line = max(k for k, (_, special) in enumerate(pieces) if not special)  # the last text: the next line's
        return self.template.tokens(pieces[:line])

    def text_tokens(self, text: str) -> list[int]:
        """Tokens of plain text (no BOS, special-token names left as text)."""
        return self.model.tokenize(text, add_bos=False, special=False)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.model.piece(t) for t in tokens).decode(errors="replace")

    # --- sequences --------------------------------------------------------------
    def attach(self, kv: KvSeq, target: list[int]) -> Lane:
        """A lane that brings an NPC's sequence to ``target``, reusing the cached prefix."""
        if self.pool.acquire_for(kv) is None:
            raise Overloaded("no KV sequence free: too many NPCs and decisions in flight")
        common = min(_common_prefix(kv.tokens, target), len(target) - 1)
        if common < len(kv.tokens):
            self.ctx.seq_rm(kv.seq, common)
            del kv.tokens[common:]
        return Lane(kv.seq, common, list(target[common:]), kv=kv)

    def fork(self, kv: KvSeq | None, target: list[int]) -> Lane:
        """A lane in a fresh sequence that starts as a copy of the cached prefix of ``target``."""
        seq = self.pool.acquire()
        if seq is None:
            raise Overloaded("no KV sequence free for a decision")
        common = 0
        if kv is not None and kv.seq is not None:
            common = min(_common_prefix(kv.tokens, target), len(target) - 1)
            if common:
                self.ctx.seq_fork(kv.seq, seq, common)
        return Lane(seq, common, list(target[common:]))

    def borrow(self, kv: KvSeq, target: list[int]) -> Lane:
        """A lane in the NPC's own sequence that does not extend its history: ``give_back`` rolls it back."""
        lane = self.attach(kv, target)
        lane.kv = None
        return lane

    def give_back(self, kv: KvSeq, lane: Lane, keep: list[int]) -> None:
        """End a borrow: the sequence keeps the evaluated part of ``keep`` (a prefix of what the lane
        evaluated) and drops the rest."""
        upto = min(len(keep), lane.pos)
        kv.tokens.extend(keep[len(kv.tokens):upto])
        self.ctx.seq_rm(lane.seq, len(kv.tokens))

    def release(self, seq: int) -> None:
        self.pool.release(seq)

    def gather(self, lanes: list[Lane]) -> None:
        """Move NPC sequences so that the lanes of a step sit in consecutive sequence ids.

        With a KV stream per sequence, llama.cpp evaluates each run of consecutive sequence ids
        (in batch order: ``step`` adds lanes sorted) as a sub-batch of its own, and each sub-batch
        reads all the weights again. On Gemma-270M a step of 8 streams' next tokens took 47 ms in
        sequences 0-7 in order, 95 ms in 0-7 shuffled, 74 ms in 0, 1 and 10-15, and 171 ms in the
        even ones. A move costs about 3 ms, once; LRU eviction had left the NPCs of one
        conversation scattered over the cache.
        """
        seqs = {lane.seq for lane in lanes if not isinstance(lane, OptionTree)}
        if len(seqs) < 2 or max(seqs) - min(seqs) == len(seqs) - 1:
            return
        movable = {lane.seq: lane for lane in lanes if lane.kv is not None and lane.kv.seq == lane.seq
                   and not isinstance(lane, OptionTree)}
        k, best = len(seqs), None
        for start in range(self.ctx.n_seq - k + 1):
            window = range(start, start + k)
            outside = [s for s in seqs if s not in window]
            slots = [s for s in window if s not in seqs]
            if all(s in movable for s in outside) and all(self.pool.can_take(s) for s in slots):
                cost = (len(outside), sum(not self.pool.is_free(s) for s in slots))  # fewest moves, then evictions
                if best is None or cost < best[0]:
                    best = (cost, outside, slots)
        if best is None:
            return
        for src, dst in zip(best[1], best[2]):
            lane = movable[src]
            self.pool.move(lane.kv, dst)
            lane.seq = dst

    # --- the step ---------------------------------------------------------------
    def set_abort(self, should_abort: Callable[[], bool] | None) -> None:
        """Let ``should_abort()`` stop the next step mid-way, its option trees too: they are scored in the
        scorers' own contexts, and a cancelled decision's tree ran to its end."""
        self.ctx.set_abort(should_abort)
        for scorer in self._scorers.values():
            scorer.ctx.set_abort(should_abort)

    def step(self, lanes: list[tuple[Lane, int]]) -> StepResult:
        """Evaluate the first ``n`` pending tokens of each (lane, n) in one batch.

        On success the lanes advance and their rows point at the logits they asked for; otherwise
        the lanes are as they were. Option trees are scored whole, by the option scorer.
        """
        trees = [lane for lane, _ in lanes if isinstance(lane, OptionTree)]
        lanes = [(lane, n) for lane, n in lanes if not isinstance(lane, OptionTree)]
        rc = self._step_main(lanes) if lanes else 0
        for tree in trees:
            if rc != 0:
                break
            scorer = self.scorer(tree.adapter)
            t0 = time.perf_counter()
            rc = scorer.evaluate(tree)
            self.stats["compute_ms"] += (time.perf_counter() - t0) * 1e3
            if rc == 0:
                self.stats["tokens"] += scorer.batch.n
                self.stats["steps"] += not lanes
            self.stats["aborted_steps"] += rc == 2
        return STEP_OK if rc == 0 else _KV_FULL if rc == 1 else _ABORTED if rc == 2 else StepResult("failed", rc)

    def _step_main(self, lanes: list[tuple[Lane, int]]) -> int:
        b = self.batch
        b.clear()
        for lane, n in sorted(lanes, key=lambda item: item[0].seq):  # ids in order: see gather()
            lane.rows = []
            last = n == len(lane.pending)
            for i in range(n):
                want = lane.all_logits or (last and i == n - 1)
                row = b.add(lane.pending[i], lane.pos + i, lane.seq, want)
                if want:
                    lane.rows.append(row)
        t0 = time.perf_counter()
        rc = self.ctx.decode(b)
        self.stats["compute_ms"] += (time.perf_counter() - t0) * 1e3
        if rc != 0:
            for lane, _ in lanes:  # drop whatever a failed or aborted step left behind
                self.ctx.seq_rm(lane.seq, lane.pos)
                lane.rows = []
            self.stats["aborted_steps"] += rc == 2
            return rc
        self.stats["steps"] += 1
        self.stats["tokens"] += b.n
        for lane, n in lanes:
            done = lane.pending[:n]
            del lane.pending[:n]
            lane.pos += n
            if lane.kv is not None:
                lane.kv.tokens.extend(done)
        return 0

    def logits(self, row: int) -> np.ndarray:
        return self.ctx.logits(row, self.n_vocab)

    def close(self) -> None:
        if not self._vocab_masks.cancel():
            self._vocab_masks.exception()  # a scan under way reads the vocabulary: let it end before the model goes
        self.compiler.close()
        self.batch.close()
        for scorer in self._scorers.values():
            scorer.close()
        self.ctx.close()
        for adapter in self.adapters.values():
            adapter.close()
        if self.scoring_model is not self.model:
            self.scoring_model.close()
        self.model.close()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
