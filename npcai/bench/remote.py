"""`npcai bench --only remote`: a role served by an engine, npcai in front of it against a client
that calls the same engine directly.

Both sides talk to one llama-cpp-python server (``python -m llama_cpp.server``, started here with
the bench's model and one core less than the bench's threads: on a GPU node the engine does not
share the game server's cores, and here npcai, the direct client and the bench need one) and send
the same messages, built by the same ``Npc.chat``; the two take turns request by request (ABBA).
Measured: time to the first token of a line, a grammar decision and a choice decision (p50, per
cache state), and the aggregate tokens/s of 8 NPCs talking at once, on a server that queues
concurrent requests (``--interrupt_requests false``: what docs/DEPLOY.md tells a studio to set).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import httpx
import numpy as np
from httpx_sse import aconnect_sse

from npcai.bench import remote_prefix
from npcai.bench.machine_load import OtherLoad
from npcai.bench.report import pct
from npcai.bench.workload import SITUATIONS
from npcai.client import Client
from npcai.launcher import Sidecar
from npcai.remote.engines import llamacpp
from npcai.remote.llama_server import LlamaServer
from npcai.remote.template import renderer
from npcai import protocol as P
from npcai.sidecar.jobs import decide_prompt
from npcai.sidecar.npc import DEFAULT_LEAD, Npc

if TYPE_CHECKING:
    from npcai.bench.harness import Bench

LINES = ["Can you fix my sword?", "What is the news in the village?", "Do you sell shields?",
         "Who was here before me?", "Is the road north safe?", "What do you make today?"]
MAX_TOKENS = 16
STREAMS = 8
CHOICES = ["draw your sword", "run away"]
STREAM_PAIRS = 5  # rounds of 8 streams per side, taking turns A B B A ... (5: enough for an interval)
#: The first token with the whole prompt cached is about 18 ms, so its 1.1x target is 2 ms, within
#: one run's spread: it gets twice the pairs of the other rows (half of them in that state).
FIRST_TOKEN_PAIRS_PER_REP = 2
INTERVAL = 90  # the percent interval of a p50 ratio that each ABBA row reports (bootstrap)
#: A server for many NPCs queues concurrent requests; by default llama-cpp-python's ends the stream
#: in flight as soon as another request arrives, so 8 streams would measure its interruptions
#: (docs/DEPLOY.md). Both sides talk to this one server.
MANY_STREAMS = ("--interrupt_requests", "false")


def run(b: "Bench") -> None:
    """The item, for one model: its rows go to ``b.report`` and its samples to ``b.report.raw["remote"]``."""
    b.report.raw["remote"] = _run(b.path, b.threads, b.reps, b.persona, b.report.add, b.say)
    b.say("    remote: the prefix cache, chat against completions…")
    b.report.raw["remote"]["prefix_cache"] = remote_prefix.run(b.path, max(1, b.threads - 1), 3 if b.quick else 5,
                                                               LINES, b.report.add)


def _run(path: Path, threads: int, reps: int, persona: str, add: Callable[..., None], say: Callable[[str], None]
         ) -> dict[str, Any]:
    raw: dict[str, Any] = {"engine": "llama-cpp-python server 0.3.36", "threads": threads}
    raw["engine_threads"] = max(1, threads - 1)
    raw["engine_flags"] = list(MANY_STREAMS)
    with LlamaServer(path, threads=raw["engine_threads"], extra=MANY_STREAMS) as server, \
            Sidecar("--model", f"dialogue={server.url}", "--model", f"decision={server.url}", "--nice", "0") as sc, \
            Client(sc.endpoint) as c, _Direct(server.url) as direct_http:
        c.hello("npcai bench")
        model = c.hello("npcai bench")["models"][0]["name"]
        npc = Npc("smith", persona)
        c.npc("smith", persona)

        def line_messages(text: str) -> list[dict[str, str]]:
            return [{"role": r, "content": t} for r, t in npc.chat(("user", text))]

        def via_npcai(text: str) -> float:
            c.call("forget", npc="smith")  # the same messages as the direct client: persona and this line
            t0 = time.perf_counter()
            h = c.request("say", npc="smith", text=text, max_tokens=MAX_TOKENS, temperature=0.0)
            while True:  # poll after each wake-up, then look: a wait that comes first sleeps through
                c.poll()   # the first token and returns with the second (one token's time late)
                if h.chunks or h.finished:
                    break
                c.wait_for_reply(1.0)
            first = time.perf_counter() - t0
            c.wait(h, 120)
            return first

        def direct(text: str) -> float:
            body = {"model": model, "messages": line_messages(text), "stream": True, "max_tokens": MAX_TOKENS,
                    "temperature": 0.0, "top_p": 0.95, "top_k": 40}
            return direct_http.first_token(body)

        ttft = _abba(FIRST_TOKEN_PAIRS_PER_REP * reps, LINES, via_npcai, direct)
        raw["first_token_ms"] = ttft
        _by_state(add, "say: first token", ttft)

        grammar = (Path(__file__).resolve().parents[2] / "grammars" / "action.gbnf")
        gbnf = grammar.read_text() if grammar.is_file() else None

        def decide_npcai(situation: str) -> float:
            c.call("forget", npc="smith")  # no history: the direct client's messages
            t0 = time.perf_counter()
            c.call("decide", npc="smith", situation=situation, grammar="action", max_tokens=8, timeout=120)
            return time.perf_counter() - t0

        def decide_direct(situation: str) -> float:
            body = {"model": model, "messages": [{"role": r, "content": t} for r, t in
                                                 npc.chat(("user", decide_prompt(P.DecideRequest(
                                                     id=0, situation=situation, grammar="action"))))],
                    "stream": False, "max_tokens": 8, "temperature": 0.0, "grammar": gbnf}
            return direct_http.post("/chat/completions", body)[1]

        if gbnf is not None:
            dec = _abba(reps, SITUATIONS, decide_npcai, decide_direct)
            raw["grammar_decision_ms"] = dec
            _by_state(add, "decide (grammar): latency", dec)

        render = renderer("", "", "", model)
        adapter = llamacpp.Adapter()

        def choose_npcai(situation: str) -> float:
            c.call("forget", npc="smith")
            t0 = time.perf_counter()
            c.call("decide", npc="smith", situation=situation, choices=CHOICES, timeout=300)
            return time.perf_counter() - t0

        def choose_direct(situation: str) -> float:
            # the scoring requests npcai sends once the options' prior is cached: one per option
            req = P.DecideRequest(id=0, situation=situation, choices=CHOICES)
            prompt = render([{"role": r, "content": t} for r, t in npc.chat(("user", decide_prompt(req)))])
            took = 0.0
            for option in CHOICES:  # npcai sends them at once, but the server takes one at a time
                _, body, _ = adapter.score(model, [], prompt + DEFAULT_LEAD, " " + option)
                resp, seconds = direct_http.post("/completions", body)
                adapter.option_logprob(resp, " " + option)
                took += seconds
            return took

        if render is not None:
            choose_npcai(SITUATIONS[0])  # the prior, once per option set, off the clock
            # each takes seconds: two situations, so that a whole round (_abba) is 4 pairs, not 12
            ch = _abba(max(2, reps // 3), SITUATIONS[:2], choose_npcai, choose_direct)
            raw["choice_decision_ms"] = ch
            _by_state(add, "decide (2 choices): latency", ch)

        say(f"    remote: {STREAMS} streams at once…")
        for i in range(STREAMS):
            c.npc(f"n{i}", persona)
        npcs = [f"n{i}" for i in range(STREAMS)]
        messages = [line_messages(LINES[i % len(LINES)]) for i in range(STREAMS)]
        rounds = _rounds(STREAM_PAIRS, lambda: _streams_npcai(c, npcs),
                         lambda: direct_http.streams(model, messages), pids=[os.getpid(), sc.pid, server.proc.pid])
        raw["streams_tokens_per_s"] = rounds
        spread = rounds["spread"] = _spread(rounds["npcai"], rounds["direct"])
        busiest = max((x for side in ("npcai", "direct") for x in rounds[f"{side}_other_cores"] if x is not None),
                      default=0.0)
        if busiest >= 0.1:
            say(f"    note: other processes used up to {busiest:.2f} cores in a round of {STREAMS} streams")
        interval = f"; ratio {spread['ratio_interval'][0]:.2f}-{spread['ratio_interval'][1]:.2f}x" if spread else ""
        add("remote", f"{STREAMS} NPC streams at once: aggregate tokens/s, npcai -> engine vs direct (median of "
            f"{STREAM_PAIRS}/{STREAM_PAIRS} rounds{interval})", round(pct(rounds["npcai"], 50), 1),
            round(pct(rounds["direct"], 50), 1), "direct httpx client (asyncio)", unit="tok/s", target=">= 0.9x")
    return raw


class _Direct:
    """A client calling the engine directly, on the same stack as npcai's (httpx's async client, pooled)."""

    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(base_url=url, timeout=300)

    def first_token(self, body: dict) -> float:
        async def go() -> float:
            t0 = time.perf_counter()
            first = None
            async with aconnect_sse(self.http, "POST", "/chat/completions", json=body) as source:
                async for event in source.aiter_sse():
                    if first is None and _content(event.data):
                        first = time.perf_counter() - t0
            return first if first is not None else time.perf_counter() - t0

        return self.loop.run_until_complete(go())

    def post(self, path: str, body: dict) -> tuple[dict, float]:
        async def go() -> tuple[dict, float]:
            t0 = time.perf_counter()
            resp = await self.http.post(path, json=body)
            resp.raise_for_status()
            return resp.json(), time.perf_counter() - t0

        return self.loop.run_until_complete(go())

    def streams(self, model: str, messages: list[list[dict[str, str]]]) -> tuple[float, int]:
        """Every message list as a stream at once, on the pooled client: aggregate tokens/s, tokens."""
        async def one(msgs: list[dict[str, str]]) -> int:
            body = {"model": model, "messages": msgs, "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0.0,
                    "top_p": 0.95, "top_k": 40}
            n = 0
            async with aconnect_sse(self.http, "POST", "/chat/completions", json=body) as source:
                async for event in source.aiter_sse():
                    n += bool(_content(event.data))
            return n

        async def go() -> tuple[float, int]:
            t0 = time.perf_counter()
            tokens = sum(await asyncio.gather(*(one(m) for m in messages)))
            return tokens / (time.perf_counter() - t0), tokens

        return self.loop.run_until_complete(go())

    def __enter__(self) -> "_Direct":
        return self

    def __exit__(self, *exc) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


def _abba(reps: int, inputs: list[str], a: Callable[[str], float], b: Callable[[str], float]) -> dict[str, list]:
    """Time ``a`` and ``b`` taking turns, milliseconds, with the engine's cache state and the input
    of each sample. The first of a pair gets the input the request before it sent (``prompt_cached``:
    llama-cpp-python's server keeps the last prompt), the second the next input (``new_line``: the
    persona cached, the line not). Compare within a state: a median over both mixes two
    distributions ~50 ms apart, and lands in either.

    ``reps`` is rounded up to whole rounds of ``2 × len(inputs)`` pairs, in each of which each side
    gets each input once in each state (``_a_first``): the inputs' prompts and answers differ in
    length, and a side measured on other inputs than the other is measured on other work."""
    n = len(inputs)
    pairs = -(-reps // (2 * n)) * 2 * n
    a(inputs[-1]), b(inputs[0])  # warm-up: connections; the first pair's first finds its prompt cached
    out: dict[str, list] = {"npcai": [], "direct": [], "npcai_state": [], "direct_state": [],
                            "npcai_input": [], "direct_input": []}
    for i in range(pairs):
        order = ((a, "npcai"), (b, "direct")) if _a_first(i, n) else ((b, "direct"), (a, "npcai"))
        for (fn, name), k, state in zip(order, (i % n, (i + 1) % n), ("prompt_cached", "new_line")):
            out[name].append(round(fn(inputs[k]) * 1e3, 3))
            out[f"{name}_state"].append(state)
            out[f"{name}_input"].append(k)
    return out


def _a_first(i: int, n: int) -> bool:
    """Whether ``a`` goes first in pair ``i`` of a chain through ``n`` inputs (pair ``i`` starts on
    input ``i % n``). Plain alternation gives a side only the even inputs when ``n`` is even, so
    there the second pass through the inputs swaps the turns."""
    return (i + (i // n if n % 2 == 0 else 0)) % 2 == 0


def _by_state(add: Callable[..., None], what: str, samples: dict[str, list]) -> None:
    """One row per cache state: the p50 of a side's samples in that state against the other's, with
    the interval of their ratio (the spread a rerun of the same code may show), also kept in
    ``samples["spread"]``."""
    samples["spread"] = {}
    for state, label in (("prompt_cached", "its whole prompt cached"), ("new_line", "persona cached, new input")):
        ours, theirs = _in(samples, "npcai", state), _in(samples, "direct", state)
        spread = samples["spread"][state] = _spread(ours, theirs)
        interval = (f"; ratio {spread['ratio_interval'][0]:.2f}-{spread['ratio_interval'][1]:.2f}x"
                    if spread else "")
        add("remote", f"{what}, {label} (p50 of {len(ours)}/{len(theirs)}{interval})", pct(ours, 50),
            pct(theirs, 50), "direct httpx client", target="<= 1.1x")


def _spread(ours: list[float], theirs: list[float], seed: int = 0) -> dict[str, Any]:
    """Each side's quartiles and the ``INTERVAL`` % bootstrap interval of the ratio of their p50s
    (each side resampled on its own, 2000 times; a fixed seed: the same samples give the same
    interval); empty when a side has under 4 samples."""
    if min(len(ours), len(theirs)) < 4:
        return {}
    rng = np.random.default_rng(seed)
    a, b = np.asarray(ours), np.asarray(theirs)
    ratios = (np.median(rng.choice(a, (2000, len(a))), axis=1) / np.median(rng.choice(b, (2000, len(b))), axis=1))
    tail = (100 - INTERVAL) / 2
    return {"npcai_quartiles_ms": [round(float(q), 3) for q in np.percentile(a, (25, 50, 75))],
            "direct_quartiles_ms": [round(float(q), 3) for q in np.percentile(b, (25, 50, 75))],
            "ratio_interval": [round(float(q), 3) for q in np.percentile(ratios, (tail, 100 - tail))],
            "interval_percent": INTERVAL}


def _in(samples: dict[str, list], side: str, state: str) -> list[float]:
    return [ms for ms, s in zip(samples[side], samples[f"{side}_state"]) if s == state]


def _rounds(pairs: int, a: Callable[[], tuple[float, int]], b: Callable[[], tuple[float, int]],
            pids: list[int] | None = None) -> dict[str, list]:
    """``a`` and ``b`` taking turns A B B A ..., each round's tokens/s and tokens, per side, and the
    cores that processes other than ``pids`` (the bench, its sidecar and engine) used in the round:
    a round beside a busy process measures that process too (machine_load.py)."""
    out: dict[str, list] = {"npcai": [], "direct": [], "npcai_tokens": [], "direct_tokens": [],
                            "npcai_other_cores": [], "direct_other_cores": []}
    for i in range(pairs):
        for fn, name in (((a, "npcai"), (b, "direct")) if i % 2 == 0 else ((b, "direct"), (a, "npcai"))):
            load, t0 = OtherLoad(pids or []), time.perf_counter()
            rate, tokens = fn()
            cores = load.cores(time.perf_counter() - t0) if pids else None
            out[name].append(round(rate, 2))
            out[f"{name}_tokens"].append(tokens)
            out[f"{name}_other_cores"].append(None if cores is None else round(cores, 3))
    return out


def _streams_npcai(c: Client, npcs: list[str]) -> tuple[float, int]:
    for n in npcs:
        c.call("forget", npc=n)
    t0 = time.perf_counter()
    handles = [c.request("say", npc=n, text=LINES[i % len(LINES)], max_tokens=MAX_TOKENS, temperature=0.0)
               for i, n in enumerate(npcs)]
    tokens = sum(c.wait(h, 300).get("tokens", 0) for h in handles)
    return tokens / (time.perf_counter() - t0), tokens


def _content(data: str) -> str:
    """The text a chat stream's event adds (none for the role, the finish and ``[DONE]``)."""
    if data.strip() == "[DONE]":
        return ""
    choice = (json.loads(data).get("choices") or [{}])[0]
    return (choice.get("delta") or {}).get("content") or ""
