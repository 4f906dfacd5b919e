"""`npcai bench`: macro-benchmarks, each side by side with what a developer would otherwise use.

Every comparison runs in the same process run on the same machine: the sidecar (a
child process, as a game would run it) against llama-cpp-python's high-level API or
against llama.cpp's own forward passes for the same tokens. Results are ratios; a
table goes to stdout and a JSON report (with the machine) to ``--out``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from npcai import __version__
from npcai.client import Client
from npcai.demo import load_scenario
from npcai.errors import NpcaiError
from npcai.launcher import Sidecar
from npcai.model import catalog
from npcai.model.native import Batch, Context, Model, safe_llama_defaults
from npcai.sidecar.settings import Settings

SITUATIONS = [  # about 20 tokens each with the chat template, as the scenario; different from word one
    "The player walks toward you with a drawn sword.",
    "A wolf howls nearby and the player is bleeding.",
    "Two guards block the road and demand papers.",
    "Thunder shakes the bridge and a plank snaps.",
    "The player offers you a heavy purse of gold.",
    "Smoke rises from the village behind you.",
]
CHOICES = ["attack", "flee", "beg for mercy", "offer a bribe", "call for help", "pretend to be dead"]
SCHEMA = {"type": "object", "properties": {"action": {"enum": ["arrest", "follow", "raise_alarm", "ignore"]},
                                           "target": {"enum": ["stranger", "player", "none"]}},
          "required": ["action", "target"], "additionalProperties": False}
#: Every item `npcai bench --only` can name, in the order they run; the CLI offers exactly these.
ITEMS = ("transport", "decision", "dialogue", "many", "mixed", "cancel", "ahead", "weights", "kv", "frame", "quality",
         "remote")
_READ_S = 0.3  # a player reading a line and answering, in the paced turn-taking measure
_BUDGETED = "load, budget (40 dialogue tokens/s, 16.7 ms frames) + frame reports"  # the case with targets
GBNF = {  # what a developer would hand llama-cpp-python for the same decisions (same output text)
    "choice": "root ::= " + " | ".join(f'"{c}"' for c in CHOICES),
    "json": 'root ::= "{\\"action\\": \\"" ("arrest" | "follow" | "raise_alarm" | "ignore") '
            '"\\", \\"target\\": \\"" ("stranger" | "player" | "none") "\\"}"',
}
LINES = [  # player lines of about 16 tokens
    "Can you fix my sword before the tournament starts tomorrow morning, please?",
    "How much would you charge me for a new shield with my family crest on it?",
    "Have you seen any strangers in town since the storm started last night?",
    "Why are you always so grumpy with everyone who comes into your forge?",
]


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class Row:
    item: str
    metric: str
    npcai: float | None
    baseline: float | None = None
    baseline_name: str = ""
    unit: str = "ms"
    target: str = ""

    @property
    def ratio(self) -> float | None:
        if self.npcai is None or not self.baseline:
            return None
        return round(self.npcai / self.baseline, 3)


@dataclass
class Report:
    model: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, *args: Any, **kw: Any) -> None:
        self.rows.append(Row(*args, **kw))


class _Bench:
    """Runs the items for one model: a sidecar, a client, and in-process baselines."""

    def __init__(self, model: str, quick: bool, out: Callable[[str], None], threads: int = 0,
                 data: str | None = None, quality_items: int = 0):
        self.model = model
        self.data = data
        self.quality_items = quality_items or (100 if quick else 500)
        self.path = catalog.resolve(model)
        self.quick = quick
        self.say = out
        self.reps = 8 if quick else 30
        self.settings = Settings(threads=threads)
        self.threads = self.settings.compute_threads
        self.report = Report(model)
        scene = load_scenario(None)
        self.persona = scene["npcs"]["grik"]["persona"]
        self.personas = [scene["npcs"][n]["persona"] for n in ("brom", "mira", "grik", "captain")]
        self._llama = None
        self._native: tuple[Model, Context, Batch] | None = None

    # --- the systems under test -----------------------------------------------------------
    def sidecar(self) -> tuple[Sidecar, Client]:
        # Same priority as the in-process baselines: politeness is judged by the frame item.
        sc = Sidecar("--model", self.model, "--threads", str(self.threads), "--nice", "0")
        c = Client(sc.endpoint)
        c.hello("npcai bench")
        return sc, c

    def llama(self):
        """llama-cpp-python's high-level API, configured like the sidecar (threads, batch)."""
        if self._llama is None:
            import llama_cpp

            with contextlib.redirect_stderr(io.StringIO()), safe_llama_defaults():
                self._llama = llama_cpp.Llama(str(self.path), n_ctx=4096, n_batch=self.settings.n_batch,
                                              n_threads=self.threads, n_threads_batch=self.threads, verbose=False)
        return self._llama

    def native(self) -> tuple[Model, Context, Batch]:
        """llama.cpp itself, with the sidecar's context settings: the model's own cost."""
        if self._native is None:
            m = Model(self.path)
            entry = catalog.entry_for(self.path)
            ctx = Context(m, n_ctx=self.settings.n_ctx, n_batch=self.settings.n_batch, n_seq=self.settings.n_seq,
                          threads=self.threads, flash_attn=entry.flash_attn if entry else None)
            self._native = (m, ctx, Batch(self.settings.n_batch))
        return self._native

    def close(self) -> None:
        if self._native:
            m, ctx, b = self._native
            b.close(), ctx.close(), m.close()
        self._llama = None

    # --- model-only timings -----------------------------------------------------------------
    def forward_ms(self, cached: int, batches: list[int], seqs: int = 1) -> float:
        """Time llama.cpp evaluating ``batches`` (token counts) after ``cached`` tokens of context in
        each of ``seqs`` sequences (each its own cells, as every NPC has its own history)."""
        m, ctx, b = self.native()
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
        for n in batches:
            b.clear()
            per = max(1, n // seqs)
            for s in range(seqs):
                for i in range(per):
                    b.add(tok, pos + i, s, i == per - 1)
            ctx.decode(b)
            m_ = ctx.logits(b.n - 1, m.n_vocab)
            m_.argmax()  # touch the logits like a sampler would
            pos += per
        return (time.perf_counter() - start) * 1000

    # --- items ----------------------------------------------------------------------------------
    def transport(self, c: Client) -> None:
        """The same bare DEALER loop against the sidecar and against a bare echo process: only the server
        differs. Interleaved in rounds, so that drift in this machine's load falls on both alike."""
        n = 300 if self.quick else 2000
        hello, ping, echo = [], [], []
        with _BareEcho() as echo_endpoint:
            for _ in range(10):
                hello += _round_trips(c.endpoint, {"v": 1, "id": 1, "op": "hello", "client": "bench"}, n // 10)
                ping += _round_trips(c.endpoint, {"v": 1, "id": 1, "op": "ping"}, n // 10)
                echo += _round_trips(echo_endpoint, {"v": 1, "id": 1, "op": "hello"}, n // 10)
        r = self.report
        r.add("transport", "hello round trip p50", pct(hello, 50), pct(echo, 50), "pyzmq DEALER/ROUTER echo",
              target="<= 1.2x")
        r.add("transport", "hello round trip p99", pct(hello, 99), pct(echo, 99), "pyzmq DEALER/ROUTER echo",
              target="<= 1.5x")
        r.add("transport", "ping round trip p50", pct(ping, 50), pct(echo, 50), "pyzmq DEALER/ROUTER echo")

    def decisions(self, c: Client) -> None:
        c.npc("grik", self.persona)
        for kind, fields in (("choice", {"choices": CHOICES}), ("json", {"schema": SCHEMA})):
            lat, replies = [], []
            c.decide(SITUATIONS[-1], npc="grik", **fields)  # compile and warm up
            for i in range(self.reps):
                t = time.perf_counter()
                replies.append(c.decide(SITUATIONS[i % len(SITUATIONS)], npc="grik", **fields))
                lat.append((time.perf_counter() - t) * 1000)
            gbnf = self._gbnf_decisions(kind)
            model_only = [self._replay(r["usage"]) for r in replies[: max(4, self.reps // 3)]]
            r = self.report
            r.add("decision", f"{kind} p50", pct(lat, 50), pct(gbnf, 50), "llama-cpp-python grammar=GBNF",
                  target=">= 3x faster (SmolLM2), 5x (Gemma)")
            r.add("decision", f"{kind} p99", pct(lat, 99), pct(gbnf, 99), "llama-cpp-python grammar=GBNF")
            r.add("overhead", f"{kind} decision vs its forward passes (p50)", pct(lat, 50), pct(model_only, 50),
                  "llama.cpp forward passes alone", target="<= 1.25x")
            self.report.raw[f"decision_{kind}"] = {"npcai_ms": lat, "gbnf_ms": gbnf, "model_only_ms": model_only,
                                                  "usage": [r["usage"] for r in replies]}
        try:
            import outlines  # noqa: F401

            self.report.raw["outlines"] = "installed but not benchmarked: its llama.cpp loop resets the cache"
        except ImportError:
            self.report.raw["outlines"] = "not installed"

    def _replay(self, usage: dict[str, int]) -> float:
        """The same forward passes a decision made: its prompt batch, then its later steps."""
        steps = max(1, usage["steps"])
        rest = usage["evaluated_tokens"] - usage["prompt_tokens"]
        later = [max(1, rest // (steps - 1))] * (steps - 1) if steps > 1 else []
        return self.forward_ms(usage["cached_tokens"], [usage["prompt_tokens"], *later])

    def _gbnf_decisions(self, kind: str) -> list[float]:
        import llama_cpp

        llm = self.llama()
        grammar = llama_cpp.LlamaGrammar.from_string(GBNF[kind], verbose=False)
        hint = ("\n\nWhat do you do? Answer with exactly one of: " + "; ".join(CHOICES) + "."
                if kind == "choice" else "\n\nAnswer in JSON.")
        out = []
        for i in range(self.reps + 1):
            msgs = [{"role": "system", "content": self.persona},
                    {"role": "user", "content": SITUATIONS[(i - 1) % len(SITUATIONS)] + hint}]
            t = time.perf_counter()
            llm.create_chat_completion(msgs, grammar=grammar, temperature=0.0, max_tokens=48)
            if i:  # the first call warms the persona cache
                out.append((time.perf_counter() - t) * 1000)
        return out

    def dialogue(self, c: Client) -> None:
        c.npc("brom", self.personas[0])
        warm, cold, usage = [], [], []
        for i in range(self.reps):
            c.call("forget", npc="brom")
            h = c.request("say", npc="brom", text=LINES[i % len(LINES)], max_tokens=4)
            warm.append(self._ttft(c, h))
            usage.append(h.reply["usage"])
        state = c.call("save", npc="brom")["state"]
        for i in range(max(4, self.reps // 3)):
            c.call("load", npc=f"cold{i}", state=state)  # defined but never evaluated: a cold persona
            cold.append(self._ttft(c, c.request("say", npc=f"cold{i}", text=LINES[i % len(LINES)], max_tokens=4)))
        own = [self.forward_ms(u["cached_tokens"], [u["prompt_tokens"]]) for u in usage[:6]]
        r = self.report
        r.add("dialogue", "first token, cached persona (p50)", pct(warm, 50), pct(own, 50),
              "llama.cpp prefill of the new tokens", target="<= 1.2x")
        r.add("dialogue", "first token, cold persona (p50)", pct(cold, 50), pct(warm, 50), "cached persona")
        # Four NPCs taking turns. The baseline is sent each NPC's persona and the same history, so
        # both sides answer identical prompts: one from its NPC's cached sequence, one from its single cache.
        for k, p in enumerate(self.personas):
            c.npc(f"turn{k}", p)
        history: list[list[dict[str, str]]] = [[{"role": "system", "content": p}] for p in self.personas]
        prompts: list[list[dict[str, str]]] = []
        turns, paced = [], []
        for i in range(2 * self.reps):  # the second half with the time a player takes to read and answer
            if i >= self.reps:
                time.sleep(_READ_S)
            k, line = i % 4, LINES[i % len(LINES)]
            h = c.request("say", npc=f"turn{k}", text=line, max_tokens=4)
            (turns if i < self.reps else paced).append(self._ttft(c, h))
            history[k].append({"role": "user", "content": line})
            prompts.append(list(history[k]))
            history[k].append({"role": "assistant", "content": h.reply["text"]})
        lcp, lcp_paced = self._llama_turns(prompts[:self.reps]), self._llama_turns(prompts[self.reps:], pause=_READ_S)
        r.add("dialogue", "first token, 4 NPCs taking turns (p50)", pct(turns, 50), pct(lcp, 50),
              "llama-cpp-python stream=True", target=">= 2.5x faster")
        r.add("dialogue", f"... with {_READ_S * 1000:.0f} ms to read between lines (p50)", pct(paced, 50),
              pct(lcp_paced, 50), "llama-cpp-python stream=True", target=">= 2.5x faster")
        forgetful = self._llama_turns([[p[0], p[-1]] for p in prompts[:self.reps]])
        r.add("dialogue", "... baseline sent no history, only persona and line (p50)", pct(turns, 50),
              pct(forgetful, 50), "llama-cpp-python stream=True")
        # One stream's decode rate.
        rates = []
        for i in range(3 if self.quick else 6):
            c.npc("solo", self.personas[0])
            rates.append(self._rate(c, c.request("say", npc="solo", text=LINES[i % 4], max_tokens=48,
                                                 temperature=0.0)))
        base = self._llama_rate(48)
        r.add("dialogue", "one stream, tokens/s", statistics.median(rates), base, "llama-cpp-python stream",
              unit="tok/s", target=">= 0.95x")
        self.report.raw["dialogue"] = {"ttft_warm_ms": warm, "ttft_cold_ms": cold, "own_ms": own,
                                       "turns_ms": turns, "llama_turns_ms": lcp, "paced_turns_ms": paced,
                                       "llama_paced_turns_ms": lcp_paced,
                                       "llama_turns_no_history_ms": forgetful, "rates": rates}

    def _ttft(self, c: Client, h) -> float:
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

    def _rate(self, c: Client, h) -> float:
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

    def _llama_turns(self, prompts: list[list[dict[str, str]]], pause: float = 0.0) -> list[float]:
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

    def _llama_rate(self, n: int) -> float:
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

    def many(self, c: Client) -> None:
        counts = [1, 2, 4, 8] if self.quick else [1, 2, 4, 8, 16]
        raw = {}
        def ceiling(n: int) -> float:  # ~persona + line + reply in each sequence
            return n / (self.forward_ms(100, [n] * 8, seqs=n) / 8 / 1000)

        for n in counts:
            before = ceiling(n)  # and again after the streams: drift in this machine's speed falls on both
            for k in range(n):
                c.npc(f"crowd{k}", self.personas[k % 4], seed=k)
            handles = [c.request("say", npc=f"crowd{k}", text=LINES[k % 4], max_tokens=32, temperature=0.8)
                       for k in range(n)]
            stamps: dict[int, list[float]] = {h.id: [] for h in handles}
            seen = {h.id: 0 for h in handles}
            while not all(h.finished for h in handles):
                c.poll(max_messages=256, budget_us=20_000)
                now = time.perf_counter()
                for h in handles:
                    while seen[h.id] < len(h.chunks):
                        stamps[h.id].append(now)
                        seen[h.id] += 1
                c.wait_for_reply(0.005)  # block, not spin: a spinning client steals a core
            # Steady state: from the moment every stream has started until the first one ends.
            lo = max(s[0] for s in stamps.values() if s)
            hi = min(s[-1] for s in stamps.values() if s)
            inside = sum(1 for s in stamps.values() for t in s if lo < t <= hi)
            agg = inside / (hi - lo) if hi > lo else 0.0
            gaps = [(b - a) * 1000 for s in stamps.values() for a, b in zip(s, s[1:])]
            top = (before + ceiling(n)) / 2
            self.report.add("many", f"{n} streams: aggregate tokens/s", agg, top, f"one batch of {n} tokens",
                            unit="tok/s", target=">= 0.85x")
            self.report.add("many", f"{n} streams: inter-token p99", pct(gaps, 99), None, unit="ms")
            raw[n] = {"aggregate_tok_s": agg, "ceiling_tok_s": top, "gap_p99_ms": pct(gaps, 99)}
        self.report.raw["many"] = raw

    def mixed(self, c: Client) -> None:
        seconds = 5.0 if self.quick else 15.0
        for k in range(8):
            c.npc(f"mix{k}", self.personas[k % 4], seed=k)
        c.npc("grik", self.persona)
        streams = {k: c.request("say", npc=f"mix{k}", text=LINES[k % 4], max_tokens=48) for k in range(8)}
        decisions: list[tuple[float, Any]] = []
        start = time.perf_counter()
        next_decision = start
        stream_tokens = 0
        while time.perf_counter() - start < seconds:
            now = time.perf_counter()
            if now >= next_decision:
                h = c.request("decide", npc="grik", situation=SITUATIONS[len(decisions) % 6], choices=CHOICES,
                              deadline_ms=150, fallback="flee")
                decisions.append((now, h))
                next_decision += 0.1
            c.poll(max_messages=256, budget_us=5_000)
            for k, h in list(streams.items()):
                if h.finished:
                    stream_tokens += len(h.chunks)
                    streams[k] = c.request("say", npc=f"mix{k}", text=LINES[(k + len(decisions)) % 4],
                                           max_tokens=48)
            for t0, h in decisions:
                if h.finished and not hasattr(h, "arrived"):
                    h.arrived = time.perf_counter()
            c.wait_for_reply(max(0.0, min(0.005, next_decision - time.perf_counter())))
        end = time.perf_counter() + 2
        while time.perf_counter() < end and not all(h.finished for _, h in decisions):
            c.poll(max_messages=256, budget_us=5_000)
            for t0, h in decisions:
                if h.finished and not hasattr(h, "arrived"):
                    h.arrived = time.perf_counter()
            c.wait_for_reply(0.005)
        for h in streams.values():
            stream_tokens += len(h.chunks)
            c.request("cancel", target=h.id)
        answered = sum(1 for _, h in decisions if h.finished and not h.reply.get("used_fallback"))
        fallback = sum(1 for _, h in decisions if h.finished and h.reply.get("used_fallback"))
        late = sum(1 for t0, h in decisions if h.finished and (h.arrived - t0) * 1000 > 150 + 25)
        late_server = sum(1 for _, h in decisions if h.finished and not h.reply.get("timed_out")
                          and h.reply["timing"]["total_ms"] > 150)
        n = len(decisions)
        r = self.report
        r.add("mixed", "decisions answered in time", answered / n * 100, unit="%", target=">= 95%")
        r.add("mixed", "decisions answered with fallback", fallback / n * 100, unit="%")
        r.add("mixed", "late answers (server clock)", late_server, unit="count", target="0")
        r.add("mixed", "arrived > deadline + 25 ms (client clock)", late, unit="count")
        r.add("mixed", "dialogue tokens/s meanwhile", stream_tokens / seconds, unit="tok/s")
        self.report.raw["mixed"] = {"decisions": n, "answered": answered, "fallback": fallback, "late_client": late,
                                    "late_server": late_server}

    def cancellation(self, c: Client) -> None:
        c.npc("talker", self.personas[1])
        text = " ".join(["The caravan from the eastern hills brought silk, salt and rumours of war."] * 40)
        lat = []
        for i in range(3 if self.quick else 8):
            c.call("forget", npc="talker")
            h = c.request("say", npc="talker", text=text + f" ({i})", max_tokens=4)
            time.sleep(0.08)  # well inside the long prefill
            t = time.perf_counter()
            c.request("cancel", target=h.id)
            reply = c.wait(h, 60)
            lat.append((time.perf_counter() - t) * 1000)
            if reply["event"] != "cancelled":
                lat.pop()
        chunk = self.forward_ms(0, [self.settings.n_batch])
        self.report.add("cancel", "cancel -> cancelled during a long prefill (p50)", pct(lat, 50), chunk,
                        f"one {self.settings.n_batch}-token prefill chunk")
        self.report.raw["cancel_ms"] = lat

    def ahead(self, c: Client) -> None:
        c.npc("grik", self.persona)
        told, seen = [], []
        for i in range(self.reps // 2 or 2):
            situation = SITUATIONS[i % 6]
            c.call("forget", npc="grik")
            t = time.perf_counter()
            c.decide(situation, npc="grik", choices=CHOICES)
            told.append((time.perf_counter() - t) * 1000)
            c.call("forget", npc="grik")
            c.call("observe", npc="grik", text=situation)
            time.sleep(0.6)  # the game keeps playing; the sidecar evaluates the event in spare steps
            t = time.perf_counter()
            c.decide("What do you do now?", npc="grik", choices=CHOICES)
            seen.append((time.perf_counter() - t) * 1000)
        self.report.add("ahead", "decision after observe (p50)", pct(seen, 50), pct(told, 50),
                        "situation sent with the decision")

    def frame_budget(self) -> None:
        """The game's frame times beside an idle sidecar, then under load with four configurations."""
        seconds = 6.0 if self.quick else 15.0
        cores = str(os.cpu_count() or 1)
        cases = [("idle", [], ["--idle"]),
                 ("load, no budget (nice 0, all cores)", ["--nice", "0", "--threads", cores], []),
                 ("load, polite defaults", [], []),
                 (_BUDGETED, ["--frame-ms", "16.7", "--budget-tokens-per-s", "40"], ["--report-frames"]),
                 ("load, tight budget (share 0.5) + frame reports", ["--frame-ms", "16.7", "--budget-share", "0.5"],
                  ["--report-frames"])]
        work = 0
        raw = {}
        for name, serve_args, game_args in cases:
            with Sidecar("--model", self.model, *serve_args) as sc:
                cmd = [sys.executable, "-m", "npcai.bench.gameloop", sc.endpoint, "--seconds", str(seconds),
                       "--work", str(work), *game_args]
                import subprocess

                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120)
                if proc.returncode != 0:
                    raise NpcaiError(f"game loop failed: {proc.stderr.strip().splitlines()[-1:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                with Client(sc.endpoint) as c:
                    res["budget"] = c.call("stats")["engine"]["budget"]
            work = work or res["work"]
            f = res["frames_ms"]
            raw[name] = {"p50": pct(f, 50), "p99": pct(f, 99), "max": max(f),
                         "missed_pct": 100 * sum(x > 1000 / 60 for x in f) / len(f),
                         "late_10pct": 100 * sum(x > 1.1 * 1000 / 60 for x in f) / len(f),
                         "tokens_s": res["tokens"] / res["seconds"],
                         "decisions_in_time_pct": 100 * res["decisions_in_time"] / res["decisions"]
                         if res["decisions"] else None,
                         "budget": res["budget"]}
        idle = raw["idle"]["p99"]
        for name, d in raw.items():
            self.report.add("frame", f"{name}: frame p99", d["p99"], idle, "idle sidecar",
                            target="<= 1.10x" if name == _BUDGETED else "")
            # A paced frame measures 16.7 ms plus timer jitter, so "missed" means over 10 % late.
            self.report.add("frame", f"{name}: missed frames (> 18.4 ms)", d["late_10pct"], unit="%",
                            target="<= 1%" if name == _BUDGETED else "")
            if name != "idle":
                self.report.add("frame", f"{name}: decisions in time", d["decisions_in_time_pct"], unit="%",
                                target=">= 90%" if name == _BUDGETED else "")
                self.report.add("frame", f"{name}: sidecar tokens/s", d["tokens_s"], unit="tok/s")
        self.report.raw["frame"] = raw

    def weights(self) -> None:
        """A converted model beside its shipped file: prompt and token cost, and how close its predictions stay."""
        entry = catalog.CATALOG.get(self.model)
        if entry is None or entry.cpu_weights is None:
            return
        shipped = catalog.cached_path(self.model)
        text = " ".join(self.personas) + " " + " ".join(SITUATIONS)
        runs = {}
        for label, path in (("shipped", shipped), ("run", self.path)):
            m = Model(path)
            ctx = Context(m, n_ctx=1024, n_batch=self.settings.n_batch, n_seq=2, threads=self.threads)
            b = Batch(self.settings.n_batch)
            tokens = m.tokenize(text, add_bos=True)[:200]
            b.clear()
            for i, t in enumerate(tokens):
                b.add(t, i, 0, True)
            ctx.decode(b)
            logits = np.stack([ctx.logits(i, m.n_vocab).astype(np.float64) for i in range(len(tokens))])
            timing = {}
            for n in (1, 16, 64):
                samples = []
                for _ in range(self.reps // 2 or 4):
                    b.clear()
                    for i in range(n):
                        b.add(tokens[i], 100 + i, 1, i == n - 1)
                    t0 = time.perf_counter()
                    ctx.decode(b)
                    samples.append((time.perf_counter() - t0) * 1000)
                    ctx.seq_rm(1)
                timing[n] = pct(samples, 50)
            shifted = logits - logits.max(axis=1, keepdims=True)
            runs[label] = (timing, shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))  # log-softmax
            b.close(), ctx.close(), m.close()
        (t_run, lp_run), (t_ship, lp_ship) = runs["run"], runs["shipped"]
        name = f"{entry.cpu_weights} vs shipped {shipped.stem.rsplit('.', 1)[-1]}"
        for n, what in ((16, "16-token prompt"), (64, "64-token prompt"), (1, "one token")):
            self.report.add("weights", f"{what} ({name})", t_run[n], t_ship[n], "shipped file")
        kl = (np.exp(lp_ship) * (lp_ship - lp_run)).sum(axis=1)
        agree = (lp_ship.argmax(axis=1) == lp_run.argmax(axis=1)).mean() * 100
        self.report.add("weights", "next-token KL(shipped || run), mean", float(kl.mean()), unit="nats")
        self.report.add("weights", "same most likely next token", float(agree), unit="%")
        self.report.raw["weights"] = {"run_ms": t_run, "shipped_ms": t_ship, "kl_mean": float(kl.mean()),
                                      "kl_p99": float(np.percentile(kl, 99)), "top1_agree_pct": float(agree)}

    def kv(self) -> None:
        """The KV cache's layout and what it costs. Why every NPC has its own KV stream, what parking an
        NPC that gives way saves, and the flash-attention choice: one NPC's step as other
        NPCs' cells fill the cache, as run (a stream per sequence) vs one unified cache with llama.cpp's
        own attention choice (how npcai ran before); and a step after a long history, FA on vs off."""
        m = Model(self.path)
        entry = catalog.entry_for(self.path)
        fa = entry.flash_attn if entry else None
        b = Batch(self.settings.n_batch)
        raw: dict[str, Any] = {}

        def feed(ctx: Context, seq: int, start: int, n: int) -> None:
            pos = start
            while pos < start + n:
                k = min(self.settings.n_batch, start + n - pos)
                b.clear()
                for i in range(k):
                    b.add(1, pos + i, seq, i == k - 1)
                if ctx.decode(b) != 0:
                    raise RuntimeError("llama_decode failed")
                pos += k

        def step_ms(ctx: Context, cached: int, n: int) -> float:
            times = []
            for _ in range(self.reps // 3 or 4):
                ctx.seq_rm(0, cached)
                start = time.perf_counter()
                feed(ctx, 0, cached, n)
                times.append((time.perf_counter() - start) * 1000)
            return statistics.median(times)

        try:
            for unified in (True, False):
                ctx = Context(m, n_ctx=self.settings.n_ctx, n_batch=self.settings.n_batch, n_seq=self.settings.n_seq,
                              threads=self.threads, flash_attn=None if unified else fa, unified=unified)
                feed(ctx, 0, 0, 100)
                step_ms(ctx, 100, 22)  # warm-up: the first steps of a fresh context run slower
                alone = step_ms(ctx, 100, 22)
                for seq in range(1, self.settings.n_seq):  # other NPCs with 400-token histories
                    feed(ctx, seq, 0, 400)
                raw["unified" if unified else "streams"] = {"alone_ms": alone, "crowded_ms": step_ms(ctx, 100, 22)}
                if not unified:  # an NPC that gave way coming back: its parked cells vs evaluating them again
                    start = time.perf_counter()
                    parked = ctx.seq_save(1)
                    ctx.seq_rm(1)
                    ctx.seq_load(1, parked)
                    park_ms = (time.perf_counter() - start) * 1000
                    ctx.seq_rm(1)
                    start = time.perf_counter()
                    feed(ctx, 1, 0, 400)
                    raw["park"] = {"park_and_restore_ms": park_ms, "evaluate_ms": (time.perf_counter() - start) * 1000,
                                   "bytes": len(parked)}
                ctx.close()
            others = 400 * (self.settings.n_seq - 1)
            before = "one unified KV cache, as before"
            self.report.add("kv", f"22-token step beside {others} cells of other NPCs (p50)",
                            raw["streams"]["crowded_ms"], raw["unified"]["crowded_ms"], before)
            self.report.add("kv", "... the same step with no other NPC resident (p50)",
                            raw["streams"]["alone_ms"], raw["unified"]["alone_ms"], before)
            self.report.add("kv", "an NPC of 400 cells back after giving way: park + restore",
                            raw["park"]["park_and_restore_ms"], raw["park"]["evaluate_ms"], "evaluating it again")
            if fa is not None:
                for label, flag in (("configured", fa), ("other", not fa)):
                    ctx = Context(m, n_ctx=self.settings.n_ctx, n_batch=self.settings.n_batch,
                                  n_seq=self.settings.n_seq, threads=self.threads, flash_attn=flag)
                    feed(ctx, 0, 0, 900)
                    step_ms(ctx, 900, 26)  # warm-up
                    raw[f"flash_attn_{label}"] = {"flash_attn": flag, "ms": step_ms(ctx, 900, 26)}
                    ctx.close()
                self.report.add("kv", f"26-token step after 900 cached, flash attention {'on' if fa else 'off'}"
                                " (p50)", raw["flash_attn_configured"]["ms"], raw["flash_attn_other"]["ms"],
                                f"flash attention {'off' if fa else 'on'}")
        finally:
            b.close()
            m.close()
        self.report.raw["kv"] = raw

    def quality(self, c: Client) -> None:
        """Answers worth waiting for: decide beside its anchor, structured answers, dialogue lines."""
        from npcai.bench import quality

        rows, raw = quality.run(c, self.path, self.threads, self.quality_items, quality.data_dir(self.data),
                                self.say)
        for metric, value, baseline, baseline_name, unit, target in rows:
            self.report.add("quality", metric, value, baseline, baseline_name, unit=unit, target=target)
        self.report.raw["quality"] = raw

    def run(self, only: set[str] | None) -> Report:
        unknown = sorted(set(only or ()) - set(ITEMS))
        if unknown:
            raise NpcaiError(f"no bench item {', '.join(unknown)}; items: {', '.join(ITEMS)}")
        items = [("transport", self.transport), ("decision", self.decisions), ("dialogue", self.dialogue),
                 ("many", self.many), ("mixed", self.mixed), ("cancel", self.cancellation), ("ahead", self.ahead),
                 ("quality", self.quality)]
        items = [(name, fn) for name, fn in items if not only or name in only]
        sc, c = self.sidecar() if items else (None, None)
        try:
            for name, fn in items:
                self.say(f"  {self.model}: {name}…")
                t = time.perf_counter()
                fn(c)
                self.report.raw.setdefault("seconds", {})[name] = round(time.perf_counter() - t, 1)
        finally:
            if sc is not None:
                c.close()
                sc.close()
            self.close()
        if not only or "weights" in only:
            self.say(f"  {self.model}: weights…")
            self.weights()
        if not only or "kv" in only:
            self.say(f"  {self.model}: kv…")
            self.kv()
        if not only or "frame" in only:
            self.say(f"  {self.model}: frame…")
            self.frame_budget()
        if only and "remote" in only:  # needs the [remote-test] extra: only when named
            from npcai.bench import remote

            self.say(f"  {self.model}: remote…")
            self.report.raw["remote"] = remote.run(self.path, self.threads, self.reps, self.persona, self.report.add,
                                                   self.say)
        return self.report


def _round_trips(endpoint: str, message: dict[str, Any], n: int) -> list[float]:
    import msgpack

    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(endpoint)
    try:
        return _time_round_trips(dealer, msgpack.packb(message), n)
    finally:
        dealer.close(0)


def _time_round_trips(dealer: zmq.Socket, frame: bytes, n: int) -> list[float]:
    """Milliseconds for each of ``n`` send-and-wait-for-the-answer round trips (after an untimed one that
    completes the connection's handshake)."""
    dealer.send(frame)
    dealer.poll(5000)
    dealer.recv()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        dealer.send(frame)
        dealer.poll(5000)
        dealer.recv()
        out.append((time.perf_counter() - t) * 1000)
    return out


class _BareEcho:
    """A bare pyzmq ROUTER echo in its own process (as the sidecar is in its own); yields its endpoint."""

    def __enter__(self) -> str:
        import subprocess

        self._proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
        self._endpoint = self._proc.stdout.readline().strip()
        return self._endpoint

    def __exit__(self, *exc: object) -> None:
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.connect(self._endpoint)
        dealer.send(b"stop")
        self._proc.wait(10)
        dealer.close(0)


_ECHO_SERVER = """
import zmq
router = zmq.Context().socket(zmq.ROUTER)
router.bind("tcp://127.0.0.1:0")
print(router.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
while (parts := router.recv_multipart())[-1] != b"stop":
    router.send_multipart(parts)
"""


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import llama_cpp

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__, "npcai": __version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("count",):
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def print_table(reports: list[Report], out: Callable[[str], None]) -> None:
    for rep in reports:
        out(f"\n{rep.model}")
        out(f"  {'item':<10} {'metric':<46} {'npcai':>10} {'baseline':>10} {'ratio':>7}  {'unit':<6} {'target':<16} vs")
        for r in rep.rows:
            out(f"  {r.item:<10} {r.metric:<46} {_fmt(r.npcai, r.unit):>10} {_fmt(r.baseline, r.unit):>10} "
                f"{(f'{r.ratio:.2f}x' if r.ratio is not None else '-'):>7}  {r.unit:<6} {r.target:<16} "
                f"{r.baseline_name}")


def plot(reports: list[Report], path: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NpcaiError("plots need matplotlib: pip install -e '.[bench]'") from None
    written = []
    for rep in reports:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key in zip(axes, ("decision_choice", "decision_json")):
            d = rep.raw.get(key)
            if not d:
                continue
            ax.boxplot([d["npcai_ms"], d["gbnf_ms"], d["model_only_ms"]],
                       labels=["npcai", "llama-cpp-python\nGBNF", "forward passes\nalone"])
            ax.set_title(f"{rep.model}: {key.replace('_', ' ')}")
            ax.set_ylabel("ms")
        out = path.with_name(f"{path.stem}-{rep.model}.png")
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


def run_bench(args: Any) -> int:
    models = args.model or ["smollm2-135m", "gemma3-270m"]
    only = set(args.only) if args.only else None
    out = lambda s: print(s, flush=True)
    info = machine()
    out(f"npcai bench on {info['cpu']} ({info['cores']} cores), llama-cpp-python {info['llama_cpp_python']}")
    threads = args.threads or os.cpu_count() or 1
    out(f"compute threads: {threads} for the sidecar and for every baseline")
    reports = [_Bench(m, args.quick, out, threads, args.data, args.quality_items).run(only) for m in models]
    print_table(reports, out)
    doc = {"machine": {**info, "threads": threads}, "command": " ".join(["npcai", *sys.argv[1:]]),
           "models": {r.model: {"rows": [{**r_.__dict__, "ratio": r_.ratio} for r_ in r.rows], "raw": r.raw}
                      for r in reports}}
    Path(args.out).write_text(json.dumps(doc, indent=1, default=float))
    out(f"\nreport: {args.out}")
    if args.plots:
        for p in plot(reports, Path(args.out)):
            out(f"plot: {p}")
    return 0
