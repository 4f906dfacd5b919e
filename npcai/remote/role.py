"""Remote roles at work: each request to a remote role runs as a task on one asyncio loop (its own
thread), talking to the engine through pooled connections; the engine's loop never waits on HTTP.

A task is bounded by its request's deadline (the server thread answers with the fallback at that
moment and cancels the task, which closes its HTTP request), or by ``MAX_REQUEST_S`` when the
request has none: no request hangs. When the engine fails (down, refused, 5xx, a broken stream), a
request with a fallback ends with it (``finish_reason`` "unavailable", the cause in ``message``);
one without gets the error ``unavailable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any, Callable

import numpy as np

from npcai import protocol as P
from npcai.errors import NpcaiError, Overloaded, Unavailable
from npcai.model import catalog, choices
from npcai.model.constraints import ConstraintCompiler
from npcai.model.lines import Sentences
from npcai.remote import template
from npcai.remote.check import Checker
from npcai.remote.engines import llamacpp, sglang, vllm
from npcai.remote.fair import FairGate
from npcai.remote.history import History, OnEngine
from npcai.remote.http import Upstream
from npcai.remote.plain import plain
from npcai.remote.spec import Remote
from npcai.sidecar.jobs import DECIDE_DEFAULTS, SAY_DEFAULTS, decide_prompt
from npcai.sidecar.npc import DEFAULT_LEAD, Npc

Emit = Callable[[dict[str, Any]], None]
log = logging.getLogger("npcai")

ADAPTERS = {m.NAME: m.Adapter for m in (llamacpp, vllm, sglang)}
MAX_REQUEST_S = 120.0  # the longest a request without a deadline may take
TOKEN_S = 0.005  # what a token of a remote request is taken to cost (estimate_s)
_LATE, _EXPIRED, _CANCELLED = "late", "expired", "cancelled"  # why a task was cancelled


def _wire(messages: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Messages as an engine takes them, each text kept to text (``plain``)."""
    return [{"role": r, "content": plain(c)} for r, c in messages]


class RemoteRole:
    """The "runtime" of a role served by an engine: same ops, same replies, the model work elsewhere."""

    def __init__(self, remote: Remote, upstream: Upstream, checker: Checker, history: History):
        self.spec, self.served = remote.spec, remote.served
        self._history = history
        self.name = self.served.model
        self.adapter = (vllm.Adapter(self.served.version) if self.served.engine == vllm.NAME
                        else ADAPTERS[self.served.engine]())
        self.upstream = upstream
        self.checker = checker
        self._render = (template.renderer(self.served.chat_template, self.served.bos_token, self.served.eos_token,
                                          self.served.model) if self.adapter.needs_template else None)
        self.choice_temperature = fitted_temperature(self.served.model)
        self.choice_temperature_power = fitted_temperature_power(self.served.model)
        self.priors = choices.PriorCache()
        self._writing: dict[str, asyncio.Lock] = {}  # one say at a time per NPC, in arrival order

    @property
    def compiler(self) -> ConstraintCompiler:
        """What checks an NPC's action schemas (actions.check_actions), as a local runtime's compiler does."""
        return self.checker.compiler

    def estimate_s(self, n_tokens: int, lanes: int = 1, *, tree: bool = False) -> float:
        """A rough cost, for sharing a chain's deadline among its steps in proportion (chain.py): npcai does not
        time the engine's work, and only the proportions between steps count there."""
        return n_tokens * TOKEN_S

    def describe(self, roles: list[str]) -> list[dict]:
        return [{"role": r, "name": self.name, "remote": True, "url": self.spec.base_url,
                 "engine": self.served.engine, "choice_temperature": self.choice_temperature,
                 "choice_temperature_power": self.choice_temperature_power} for r in roles]

    # --- say ------------------------------------------------------------------------------------
    async def say(self, req: P.Request, npc: Npc, emit: Emit, clock: "_Clock", gate: FairGate) -> None:
        f = req.fields
        lock = self._writing.setdefault(npc.id, asyncio.Lock())
        async with lock:
            messages = _wire(npc.chat(("user", f["text"])))  # the persona and history: the same bytes each time
            stop = f.get("stop", [])
            params = {"max_tokens": f.get("max_tokens", SAY_DEFAULTS["max_tokens"]),
                      "temperature": f.get("temperature", SAY_DEFAULTS["temperature"]),
                      "top_p": f.get("top_p", SAY_DEFAULTS["top_p"]), "top_k": f.get("top_k", SAY_DEFAULTS["top_k"]),
                      "seed": f.get("seed"), "stop": ([stop] if isinstance(stop, str) else stop) or None,
                      "priority": req.priority}
            body = self.adapter.chat(self.name, messages, params, stream=True)
            pieces: list[str] = []
            written = ""  # the pieces so far, as one text: where sentences end
            streaming, sentences = f.get("stream", True), Sentences()
            reason, usage = None, {}
            url = self.spec.base_url
            async with aclosing(self.upstream.stream("/chat/completions", body)) as chunks:
                async for chunk in chunks:
                    usage = _part(chunk, "usage", dict, url) or usage
                    choice = _first_choice(chunk, url, required=False)
                    piece = _part(_part(choice, "delta", dict, url) or {}, "content", str, url) or ""
                    if piece and len(pieces) == params["max_tokens"]:  # an engine that does not stop is stopped
                        reason = "length"
                        break  # closing the stream closes the engine's request
                    if piece:
                        clock.first()
                        await gate.spend(req.client, 1)
                        pieces.append(piece)
                        written += piece
                        if streaming:
                            emit(P.token(req.id, piece))
                            for sentence in sentences.feed(written):
                                emit(P.sentence(req.id, sentence))
                    reason = _part(choice, "finish_reason", str, url) or reason
            if reason is None:
                raise Unavailable(f"the engine at {self.spec.base_url} ended the stream without a finish reason")
            text = written
            last = sentences.rest(text)
            if streaming and last:
                emit(P.sentence(req.id, last))
            added = self._history.add(npc, [("user", f["text"]), ("assistant", text)])  # queued before done
            tokens = min(_count(usage.get("completion_tokens")) or len(pieces), params["max_tokens"])
            emit(P.done(req.id, text=text, value=text, tokens=tokens,
                        finish_reason="length" if reason == "length" else "stop", timed_out=False,
                        used_fallback=False, timing=clock.timing(), usage=_usage(usage)))
            await added  # the NPC's next say reads the history with this turn in it

    # --- decide -----------------------------------------------------------------------------------
    async def decide(self, req: P.Request, npc: Npc, emit: Emit, clock: "_Clock", gate: FairGate) -> None:
        if "choices" in req.fields:
            return await self._choose(req, npc, emit, clock)
        f = req.fields
        kind, source, compiled = await self.checker.compile(f)  # what does not compile never reaches the engine
        messages = _wire(npc.chat(("user", decide_prompt(req))))
        params = {"max_tokens": f.get("max_tokens", DECIDE_DEFAULTS["max_tokens"]),
                  "temperature": f.get("temperature", DECIDE_DEFAULTS["temperature"]),
                  "top_p": f.get("top_p"), "top_k": f.get("top_k"), "seed": f.get("seed"), "priority": req.priority}
        body = self.adapter.guide(self.adapter.chat(self.name, messages, params, stream=False), kind,
                                  json.loads(source) if kind == "schema" else source)
        resp = await self.upstream.post("/chat/completions", body)
        clock.first()
        url = self.spec.base_url
        choice = _first_choice(resp, url, required=True)
        text = _part(_part(choice, "message", dict, url) or {}, "content", str, url) or ""
        reason = _part(choice, "finish_reason", str, url)
        ok, value = self.checker.value(compiled, f, text)  # the engine may not have kept to the constraint
        usage = _part(resp, "usage", dict, url) or {}
        emit(P.done(req.id, value=value if ok else req.fallback, text=text,
                    tokens=_count(usage.get("completion_tokens")), finish_reason="stop" if ok else
                    ("length" if reason == "length" else "error"), timed_out=False, used_fallback=not ok,
                    timing=clock.timing(), usage=_usage(usage)))

    async def _choose(self, req: P.Request, npc: Npc, emit: Emit, clock: "_Clock") -> None:
        """Every option's words scored by the engine's log-probabilities of them after the lead, the
        prior of a content-free situation taken off, then softmax: ``choices.py``'s meaning."""
        f = req.fields
        if self.adapter.needs_template and self._render is None:
            raise template.missing(self.served.engine)
        names: list[str] = f["choices"]
        lead = f.get("lead", DEFAULT_LEAD).strip()
        words = f.get("descriptions", {})
        sep = " " if lead else ""
        options = [sep + words.get(c, c).strip() for c in names]
        key = ("remote", npc.persona, tuple((e["situation"], e["choice"]) for e in npc.examples), lead,
               tuple(options))
        prior = self.priors.get(key)
        asked = self._asked(npc.chat(("user", decide_prompt(req))), lead)
        jobs = [self._score(asked, o) for o in options]
        if prior is None:
            blank = self._asked(npc.persona_chat(("user", decide_prompt(req, choices.CONTENT_FREE))), lead)
            jobs += [self._score(blank, o) for o in options]
        scores = await asyncio.gather(*jobs)
        loglik = np.array(scores[:len(options)])
        if prior is None:
            prior = np.array(scores[len(options):])
            self.priors.put(key, prior)
        nbytes = choices.option_bytes(lead, [words.get(c, c) for c in names]) if f.get("per_byte") else None
        probs = choices.probabilities(loglik, prior, self.choice_temperature, nbytes, self.choice_temperature_power,
                                      req.prior_weights)
        temperature = float(f.get("temperature", DECIDE_DEFAULTS["temperature"]))
        if temperature <= 0:
            pick = int(np.argmax(probs))
        else:
            rng = np.random.default_rng(f["seed"]) if "seed" in f else npc.rng
            tempered = probs ** (1.0 / temperature)
            pick = int(np.searchsorted(np.cumsum(tempered / tempered.sum()), rng.random(), side="right")
                       .clip(0, len(probs) - 1))
        clock.first()
        emit(P.done(req.id, value=names[pick], text=names[pick], tokens=0, finish_reason="stop", timed_out=False,
                    used_fallback=False, timing=clock.timing(), usage={"requests": len(jobs)},
                    probs={c: float(p) for c, p in zip(names, probs)}))

    def _asked(self, chat: list[tuple[str, str]], lead: str) -> tuple[list[dict[str, str]], str]:
        """What every option of one prompt is scored after, made once for all of them: the messages as sent
        (the lead as the assistant's start) and, where npcai renders it, the prompt up to the option."""
        messages, lead = _wire(chat), plain(lead)
        prompt = self._render(messages) + lead if self._render is not None else ""
        return ([*messages, {"role": "assistant", "content": lead}] if lead else messages), prompt

    async def _score(self, asked: tuple[list[dict[str, str]], str], option: str) -> float:
        scoring, prompt = asked
        option = plain(option)
        path, body, rooted = self.adapter.score(self.name, scoring, prompt, option)
        resp = await (self.upstream.post_root(path, body) if rooted else self.upstream.post(path, body))
        try:
            return self.adapter.option_logprob(resp, option)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError):  # the adapter reads the engine's JSON
            raise _misshapen(self.spec.base_url, "log-probabilities") from None


def fitted_temperature(model: str) -> float:
    """The catalog's fitted choice temperature when the server serves a catalog model: its GGUF file
    (llama.cpp's servers name a model by its path) or its catalog name (an alias such as
    ``--model_alias smollm2-135m``). A choice scored remotely is the same quantity as locally (the
    same prompt, the options' summed log-probabilities, the same content-free prior), so the
    temperature fitted for the model applies. Any other name (vLLM's Hugging Face ids, other
    weights) gets the default: its scores were never fitted, and a name alone cannot say which
    weights are behind it."""
    entry = catalog.CATALOG.get(model) or catalog.entry_for(Path(model))
    return entry.choice_temperature if entry is not None else choices.DEFAULT_TEMPERATURE


def fitted_temperature_power(model: str) -> float:
    """How the fitted temperature varies with the number of options, by the same rule as ``fitted_temperature``."""
    entry = catalog.CATALOG.get(model) or catalog.entry_for(Path(model))
    return entry.choice_temperature_power if entry is not None else choices.DEFAULT_TEMPERATURE_POWER


def _usage(usage: dict) -> dict[str, int]:
    return {"prompt_tokens": _count(usage.get("prompt_tokens")),
            "completion_tokens": _count(usage.get("completion_tokens"))}


def _count(value: Any) -> int:
    """A token count an engine reported; 0 where it reported none (or no number)."""
    return value if isinstance(value, int) and value >= 0 else 0


def _first_choice(answer: dict, url: str, *, required: bool) -> dict:
    """The first of an answer's ``choices`` (an empty map where a stream's chunk has none, such as its usage)."""
    choices = answer.get("choices")
    if not required and choices in (None, []):
        return {}
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _misshapen(url, "choices")
    return choices[0]


def _part(obj: dict, key: str, kind: type, url: str) -> Any:
    """``obj[key]`` when it is a ``kind``, None when it is absent or null; an answer with anything else there
    is malformed, and ends its request ``unavailable`` as a broken stream does."""
    value = obj.get(key)
    if value is None or isinstance(value, kind):
        return value
    raise _misshapen(url, key)


def _misshapen(url: str, what: str) -> Unavailable:
    return Unavailable(f"the engine at {url} answered with {what} of an unexpected shape")


class _Clock:
    """A request's timing, shaped as local jobs report it."""

    def __init__(self, req: P.Request):
        self.received = req.received
        self.started: float | None = None
        self.first_at: float | None = None

    def first(self) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()

    def timing(self) -> dict[str, float]:
        now = time.monotonic()

        def ms(t: float | None) -> float:
            return round(((t if t is not None else now) - self.received) * 1e3, 3)

        return {"queue_ms": ms(self.started), "prefill_ms": round(((self.first_at or now) - (self.started or now))
                                                                  * 1e3, 3),
                "ttft_ms": ms(self.first_at), "total_ms": ms(now)}


class Hub:
    """The remote roles of one sidecar, their loop thread, connections and fair share."""

    def __init__(self, remotes: dict[str, Remote], grammar_dir: Path, *, connections: int,
                 client_tokens_per_s: float, on_engine: OnEngine):
        self.loop = asyncio.new_event_loop()
        self.gate = FairGate(connections, client_tokens_per_s)
        self.history = History(on_engine)
        self.checker = Checker(grammar_dir)
        upstreams: dict[tuple[str, str], Upstream] = {}
        self.roles: dict[str, RemoteRole] = {}
        for role, remote in remotes.items():
            key = (remote.spec.base_url, remote.key)
            if key not in upstreams:
                upstreams[key] = Upstream(remote.spec.base_url, remote.key, root=remote.spec.root,
                                          max_connections=connections)
            self.roles[role] = RemoteRole(remote, upstreams[key], self.checker, self.history)
        self._upstreams = list(upstreams.values())
        self._tasks: dict[int, tuple[P.Request, asyncio.Task]] = {}
        self.counters = {"requests": 0, "direct": 0, "failed": 0, "cancelled": 0}
        self._thread = threading.Thread(target=self.loop.run_forever, name="npcai-remote", daemon=True)
        self._thread.start()

    def submit(self, rt: RemoteRole, req: P.Request, npc: Npc, emit: Emit, *, direct: bool = False) -> None:
        """Start serving ``req`` (say or decide) on the loop; thread-safe. ``direct``: it comes straight
        from the socket thread (direct.py), not through the engine thread (counted, for ``stats``)."""
        if direct:
            self.counters["direct"] += 1  # the socket thread is the only one that writes this count
        self.loop.call_soon_threadsafe(self._start, rt, req, npc, emit)

    def cancel(self, req: P.Request, expired: bool) -> None:
        """Stop a request: its HTTP request is closed; a client's cancel is answered ``cancelled``."""
        self.loop.call_soon_threadsafe(self._cancel, req, expired)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "in_flight": len(self._tasks), "waiting": self.gate.waiting}

    def close(self) -> None:
        async def shut() -> None:
            for _, task in list(self._tasks.values()):
                task.cancel()
            for up in self._upstreams:
                await up.close()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout=5)
            except Exception:  # closing: whatever is left goes with the process
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        self.checker.close()

    # --- on the loop ------------------------------------------------------------------------------
    def _start(self, rt: RemoteRole, req: P.Request, npc: Npc, emit: Emit) -> None:
        self.counters["requests"] += 1
        task = self.loop.create_task(self._serve(rt, req, npc, emit))
        deadline = req.deadline
        budget = MAX_REQUEST_S if deadline is None else deadline - time.monotonic()
        timer = self.loop.call_later(max(0.0, budget), task.cancel, _LATE)
        self._tasks[id(req)] = (req, task)

        def ended(_: asyncio.Task) -> None:
            timer.cancel()
            if self._tasks.get(id(req), (None,))[0] is req:
                del self._tasks[id(req)]

        task.add_done_callback(ended)

    def _cancel(self, req: P.Request, expired: bool) -> None:
        hit = self._tasks.get(id(req))
        if hit is not None and hit[0] is req:
            hit[1].cancel(_EXPIRED if expired else _CANCELLED)

    async def _serve(self, rt: RemoteRole, req: P.Request, npc: Npc, emit: Emit) -> None:
        clock = _Clock(req)
        op = rt.say if req.op == "say" else rt.decide
        streamed: list[str] = []  # a say's chunks sent so far: a reply made up for it carries them

        def emitting(reply: dict[str, Any]) -> None:
            if reply["event"] == P.TOKEN:
                streamed.append(reply["text"])
            emit(reply)

        try:
            await self.history.settled(npc)  # an exchange still on its way to the engine thread goes first
            await self.gate.acquire(req.client)
            try:
                clock.started = time.monotonic()
                await op(req, npc, emitting, clock, self.gate)
            finally:
                self.gate.release()
        except asyncio.CancelledError as exc:  # a client's cancel, an expiry, or too late (_LATE)
            why = exc.args[0] if exc.args else ""
            if why == _LATE and req.deadline is not None:
                emit(P.with_streamed(P.timed_out(req, (time.monotonic() - req.received) * 1e3), req, streamed))
            elif why == _LATE:
                self.counters["failed"] += 1
                emit(_failed(req, Unavailable(f"the engine at {rt.spec.base_url} gave no answer within "
                                              f"{MAX_REQUEST_S:.0f} s"), streamed))
            else:
                self.counters["cancelled"] += 1
                if why == _CANCELLED:
                    emit(P.cancelled(req.id))
        except NpcaiError as err:
            self.counters["failed"] += 1
            emit(_failed(req, err, streamed))
        except Exception:  # a bug: logged once, and the request still gets its one ending reply
            log.exception("internal error serving %s %s", req.op, req.id)
            self.counters["failed"] += 1
            emit(P.error(req.id, NpcaiError(f"internal error serving {req.op}; the sidecar keeps running")))


def _failed(req: P.Request, err: NpcaiError, streamed: list[str]) -> dict[str, Any]:
    """An engine failure (down, broken, overloaded) ends a request with a fallback with it, and marks why; others
    get the error."""
    if isinstance(err, (Unavailable, Overloaded)) and "fallback" in req.fields:
        elapsed = (time.monotonic() - req.received) * 1e3
        return P.with_streamed({**P.timed_out(req, elapsed), "timed_out": False, "finish_reason": "unavailable",
                                "message": err.message}, req, streamed)
    return P.error(req.id, err)
