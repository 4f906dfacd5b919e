"""What every bench item uses: the sidecar and a client, llama-cpp-python and llama.cpp configured alike,
and timings of the model alone."""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from pathlib import Path
from typing import Callable

from npcai.bench.report import Report
from npcai.bench.workload import (
    LINES,
)
from npcai.client import Client
from npcai.demo import load_scenario
from npcai.errors import NpcaiError
from npcai.launcher import Sidecar
from npcai.model import catalog
from npcai.model.native import Batch, Context, Model, safe_llama_defaults
from npcai.model.runtime import Runtime
from npcai.model.scoring import TREE_ROOM, UBATCH
from npcai.sidecar.settings import Settings


def until_idle(c: Client, timeout_s: float, poll_s: float = 0.02) -> None:
    """Wait until the sidecar has nothing queued or running (spare-step work such as action priors
    included), or ``timeout_s`` has passed: as a game's level load leaves it before the first scene."""
    until = time.monotonic() + timeout_s
    while (engine := c.call("stats")["engine"])["queued"] + engine["running"] and time.monotonic() < until:
        time.sleep(poll_s)


class Bench:
    """Runs the items for one model: a sidecar, a client, and in-process baselines."""

    def __init__(self, model: str, quick: bool, out: Callable[[str], None], threads: int = 0,
                 data: str | None = None, quality_items: int = 0, lora: tuple[str, ...] = ()):
        self.model = model
        self.lora = lora  # --lora specs for the sidecar: its report is named MODEL+lora
        self.data = data
        self.quality_items = quality_items or (100 if quick else 500)
        self.path = catalog.resolve(model)
        self.quick = quick
        self.say = out
        self.reps = 8 if quick else 30
        self.settings = Settings(threads=threads)
        self.threads = self.settings.compute_threads
        self.report = Report(f"{model}+lora" if lora else model)
        scene = load_scenario(None)
        self.persona = scene["npcs"]["grik"]["persona"]
        self.personas = [scene["npcs"][n]["persona"] for n in ("brom", "mira", "grik", "captain")]
        self._llama = None
        self._native: tuple[Model, Context, Batch] | None = None
        self._scorer_ctx: Context | None = None
        self._scorer_model: Model | None = None  # the weights choice decisions are scored on, if not the model's
        self._scored_on: str | None = None  # their file's name, as the sidecar's hello says

    def sidecar(self) -> tuple[Sidecar, Client]:
        # Same priority as the in-process baselines: politeness is judged by the frame item.
        sc = Sidecar("--model", self.model, "--threads", str(self.threads), "--nice", "0",
                     *(arg for spec in self.lora for arg in ("--lora", spec)))
        c = Client(sc.endpoint)
        models = c.hello("npcai bench").get("models", [])
        # the decision role's, listed when --lora names it; else the first listed serves it, as every default role
        decider = next((m for m in models if m.get("role") == "decision"), models[0] if models else {})
        self._scored_on = decider.get("scoring_weights")
        return sc, c

    def llama(self):
        """llama-cpp-python's high-level API, configured like the sidecar (threads, batch)."""
        if self._llama is None:
            import llama_cpp

            with contextlib.redirect_stderr(io.StringIO()), safe_llama_defaults():
                self._llama = llama_cpp.Llama(str(self.path), n_ctx=4096, n_batch=self.settings.n_batch,
                                              n_threads=self.threads, n_threads_batch=self.threads, verbose=False)
        return self._llama

    def native(self, scorer: bool = False) -> tuple[Model, Context, Batch]:
        """llama.cpp itself, with the sidecar's context settings: the model's own cost. ``scorer``: with
        the weights and attention choice of the option scorer, where choice decisions run, if they differ."""
        if scorer:
            m, ctx, b = self.native()
            if self._scorer_ctx is None:  # laid out as the option scorer's cache: one unified cache, its size
                entry = catalog.entry_for(self.path)
                weights = self._scoring_weights()
                self._scorer_model = Model(weights) if weights is not None else None
                n_ctx = self.settings.n_ctx // self.settings.n_seq + TREE_ROOM
                self._scorer_ctx = Context(self._scorer_model or m, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=UBATCH,
                                           n_seq=Runtime.SCORER_SEQS, threads=self.threads, unified=True,
                                           flash_attn=entry.scorer_flash_attn if entry else None)
            return self._scorer_model or m, self._scorer_ctx, b
        if self._native is None:
            m = Model(self.path)
            entry = catalog.entry_for(self.path)
            ctx = Context(m, n_ctx=self.settings.n_ctx, n_batch=self.settings.n_batch, n_seq=self.settings.n_seq,
                          threads=self.threads, flash_attn=entry.flash_attn if entry else None)
            self._native = (m, ctx, Batch(self.settings.n_batch))
        return self._native

    def _scoring_weights(self) -> Path | None:
        """The file the sidecar scores choice decisions on, as its ``hello`` names it, where not the file that
        runs: a decision adapter merged into the model, or the model's scoring copy (both in the model cache)."""
        name = self._scored_on
        if name is None or name == self.path.name:
            return None
        found = next(catalog.cache_dir().rglob(name), None)
        if found is None:
            raise NpcaiError(f"the sidecar scores choices on {name}, which is not in {catalog.cache_dir()}")
        return found

    def close(self) -> None:
        if self._scorer_ctx is not None:
            self._scorer_ctx.close()
            self._scorer_ctx = None
        if self._scorer_model is not None:
            self._scorer_model.close()
            self._scorer_model = None
        if self._native:
            m, ctx, b = self._native
            b.close(), ctx.close(), m.close()
        self._llama = None

    def forward_ms(self, cached: int, batches: list[int], seqs: int = 1, rows: int = 1,
                   scorer: bool = False) -> float:
        """Time llama.cpp evaluating ``batches`` (token counts) after ``cached`` tokens of context in
        each of ``seqs`` sequences (each its own cells, as every NPC has its own history). The first
        batch's last ``rows`` tokens ask for logits (a choice's option tree reads one row per option
        token, and each row pays the whole vocabulary's output projection); later batches one.
        ``scorer``: with the option scorer's attention choice."""
        m, ctx, b = self.native(scorer)
        for s in range(seqs):
            ctx.seq_rm(s)
        tok = 1 if m.n_vocab > 1 else 0
        for s in range(seqs):  # the cached context, not timed
            pos = 0
            while pos < cached:
                n = min(self.settings.n_batch, cached - pos)
                b.clear()
                for i in range(n):
                    b.add(tok, pos + i, s, i == n - 1)
                ctx.decode(b)
                pos += n
        pos = cached
        start = time.perf_counter()
        for k, n in enumerate(batches):
            b.clear()
            per = max(1, n // seqs)
            ask = min(per, rows) if k == 0 else 1
            for s in range(seqs):
                for i in range(per):
                    b.add(tok, pos + i, s, i >= per - ask)
            ctx.decode(b)
            for row in range(b.n - ask, b.n):
                ctx.logits(row, m.n_vocab).argmax()  # touch the logits like a sampler would
            pos += per
        return (time.perf_counter() - start) * 1000

    def ttft(self, c: Client, h) -> float:
        t = time.perf_counter()
        first = None
        while not h.finished:
            c.poll(max_messages=64, budget_us=10_000)
            if first is None and h.chunks:
                first = time.perf_counter()
            c.wait_for_reply(0.005)  # block, not spin: a spinning client steals a core
        if first is None:
            first = time.perf_counter()
        return (first - t) * 1000

    def rate(self, c: Client, h) -> float:
        stamps = []
        seen = 0
        while not h.finished:
            c.poll(max_messages=64, budget_us=10_000)
            while seen < len(h.chunks):
                stamps.append(time.perf_counter())
                seen += 1
            c.wait_for_reply(0.005)  # block, not spin: a spinning client steals a core
        tokens = h.reply.get("tokens", 0)
        if len(stamps) < 2:
            return 0.0
        return (tokens - 1) / (stamps[-1] - stamps[0])

    def llama_turns(self, prompts: list[list[dict[str, str]]], pause: float = 0.0) -> list[float]:
        llm = self.llama()
        out = []
        for msgs in prompts:
            time.sleep(pause)
            t = time.perf_counter()
            for chunk in llm.create_chat_completion(msgs, stream=True, max_tokens=4, temperature=0.7):
                if chunk["choices"][0]["delta"].get("content"):
                    break
            out.append((time.perf_counter() - t) * 1000)
        return out

    def llama_rate(self, n: int) -> float:
        llm = self.llama()
        rates = []
        for i in range(3 if self.quick else 6):
            msgs = [{"role": "system", "content": self.personas[0]}, {"role": "user", "content": LINES[i % 4]}]
            stamps = []
            for chunk in llm.create_chat_completion(msgs, stream=True, max_tokens=n, temperature=0.0):
                if chunk["choices"][0]["delta"].get("content"):
                    stamps.append(time.perf_counter())
            if len(stamps) > 1:
                rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        return statistics.median(rates) if rates else 0.0
