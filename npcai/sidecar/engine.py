"""The engine: NPCs, models by role, and the loop that steps them. No sockets here.

Requests come in through ``submit`` and cancellations through ``cancel`` (both safe
to call from another thread, both through a queue); replies go out through the
``emit(req, reply)`` callback. ``run()`` is the engine's busy loop:

1. take new cancellations and requests: each request goes to its type's handler, which
   admits it (``admission.py``: the checks that need a model) and queues its job;
2. start the jobs that can start (most urgent first);
3. ``step`` each model that has work: plan (the scheduler), ``runtime.step`` (a result value;
   the preemption policy may stop it mid-way), sample (every stream's next token at once),
   then update the jobs;
4. sleep only when there is nothing to do.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from npcai import protocol as P
from npcai.errors import NpcaiError, Overloaded, UnknownNpc
from npcai.model.choices import CONTENT_FREE
from npcai.model.runtime import Runtime
from npcai.sidecar import actions, adapters, chain
from npcai.sidecar.admission import DEFAULT_ROLES, Admission, load_runtimes  # noqa: F401  (DEFAULT_ROLES: its old home)
from npcai.sidecar.budget import Governor
from npcai.sidecar.burst import Burst
from npcai.sidecar.jobs import (
    DECISION,
    IDLE,
    ChoiceDecideJob,
    ChoicePriorJob,
    DefineJob,
    GrammarDecideJob,
    Job,
    ObserveJob,
    PrimeJob,
    SayJob,
    draw_together,
    scores_trees,
)
from npcai.sidecar.npc import ANONYMOUS_PERSONA, Npc
from npcai.sidecar.preemption import Preemption
from npcai.sidecar.relay import Relay
from npcai.sidecar.scheduler import Scheduler
from npcai.sidecar.settings import Settings
from npcai.remote.spec import Remote

if TYPE_CHECKING:
    from npcai.remote.role import Hub, RemoteRole

log = logging.getLogger("npcai")

EmitFn = Callable[[P.Request, dict[str, Any]], None]

_CANCEL_KEEP_S = 5.0  # how long a cancellation waits for a request still in the inbox
#: Requests that change an NPC when the engine takes them: at their deadline, one taken ends ok (PROTOCOL.md, Deadlines).
APPLIED_WHEN_TAKEN = (P.NpcRequest, P.LoadRequest, P.ObserveRequest, P.ActResultRequest, P.ForgetRequest)


class Engine:
    def __init__(self, settings: Settings, models: dict[str, Path | Remote], emit: EmitFn):
        """``models`` maps role -> GGUF path (roles sharing a file share one runtime) or -> ``Remote``, an
        engine that serves the role (npcai/remote/)."""
        self.settings = settings
        self.limits = settings.limits
        self.emit = emit
        lora = adapters.parse(settings.lora, models)  # before any model loads: a mistake costs nothing
        remotes = {role: m for role, m in models.items() if isinstance(m, Remote)}
        self.hub: Hub | None = None
        if remotes:
            from npcai.remote.role import Hub  # httpx only where a role is remote

            self.hub = Hub(remotes, Path(settings.grammar_dir), connections=settings.remote_connections,
                           client_tokens_per_s=settings.client_tokens_per_s, on_engine=self.call_soon)
        local = load_runtimes(settings, {role: m for role, m in models.items() if not isinstance(m, Remote)})
        self.runtimes: dict[str, Runtime | RemoteRole] = {
            role: self.hub.roles[role] if isinstance(m, Remote) else local[role] for role, m in models.items()}
        adapters.attach(lora, self.runtimes)
        self.admission = Admission(self.runtimes, self.limits)
        self.governor = Governor(settings.budget, settings.compute_threads, settings.n_batch)
        self.npcs: dict[str, Npc] = {}
        self.anonymous = Npc("", ANONYMOUS_PERSONA)  # who a decide without an NPC is made as
        self.scheduler = Scheduler()
        self._inbox: queue.SimpleQueue[P.Request] = queue.SimpleQueue()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()  # see call_soon
        # Cancellations arrive through a queue, and only the engine thread touches the table it fills:
        # id(request) -> (request, expired?, when it was asked), keyed by the request itself, since a
        # client may reuse an id.
        self._cancel_inbox: queue.SimpleQueue[tuple[P.Request, bool, float]] = queue.SimpleQueue()
        self._cancels: dict[int, tuple[P.Request, bool, float]] = {}
        self.preemption = Preemption()
        # Of the requests applied when taken, those with a deadline not yet taken (id(request)): the engine
        # taking one and its deadline passing are decided under the lock, one or the other.
        self._untaken: set[int] = set()
        self._taking = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # One handler per request type (the server answers the immediate ones itself).
        self._handlers: dict[type[P.Request], Callable[[Any], None]] = {
            P.NpcRequest: self._on_npc, P.SayRequest: self._on_say, P.DecideRequest: self._on_decide,
            P.ObserveRequest: self._on_observe, P.ForgetRequest: self._on_forget, P.SaveRequest: self._on_save,
            P.LoadRequest: self._on_load, P.ActResultRequest: self._on_act_result, P.ChainRequest: self._on_chain}
        self.step_cache = chain.StepCache()
        self.role_info: dict[str, str] = settings.roles_described()  # hello's role_info adds to it
        self._relays: dict[int, Callable[[dict[str, Any]], None]] = {}  # id(request) -> where its replies go
        self._relay_npcs: dict[int, Npc] = {}  # id(request) -> the relay's own NPC it is made as
        self._dispatching: set[int] = set()  # id(request) of the relays' sub-requests being handled now
        self.counters = {"jobs_started": 0, "jobs_failed": 0, "cancelled": 0, "expired": 0, "preempted_steps": 0,
                         "shed": 0}
        self.failed = False  # the loop ended on a bug: nothing will be answered any more
        # Requests submitted, and of those taken and handled, in order (the inbox is FIFO): a request
        # numbered n by ``submitted`` has had its handler's effect once ``taken >= n`` (remote/direct.py).
        self.submitted = 0
        self.taken = 0

    # --- thread-safe entry points -----------------------------------------------------
    def submit(self, req: P.Request) -> None:
        self.submitted += 1  # the socket thread is the only one that submits (see ``taken``)
        if req.deadline is not None and isinstance(req, APPLIED_WHEN_TAKEN):
            with self._taking:
                self._untaken.add(id(req))
        self._inbox.put(req)
        self.preemption.arrived(req)
        self._wake.set()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the engine thread, before any request that arrives after this call: how
        another thread (a remote role's loop) changes NPC state, which only the engine thread touches."""
        self._calls.put(fn)
        self._wake.set()

    def dispatch(self, req: P.Request, emit: Callable[[dict[str, Any]], None], npc: Npc | None = None) -> None:
        """Serve a request made inside the sidecar (a relay's: see relay.py); its replies go to ``emit``.
        ``npc``: who a ``decide`` without one is made as (a route's router), instead of the anonymous NPC.
        Engine thread only."""
        self._relays[id(req)] = emit
        self._dispatching.add(id(req))
        self._wake.set()  # its job starts on the loop's next turn, not after the idle poll's sleep
        if npc is not None:
            self._relay_npcs[id(req)] = npc
        try:
            self._handlers[type(req)](req)
        except NpcaiError as err:
            self._relays.pop(id(req), None)
            emit(P.error(req.id, err))
        finally:
            self._relay_npcs.pop(id(req), None)
            self._dispatching.discard(id(req))

    def cancel(self, req: P.Request, *, expired: bool = False) -> None:
        """Stop work on a request; a client's cancel is answered with ``cancelled``, an expiry silently."""
        self._cancel_inbox.put((req, expired, time.monotonic()))
        if self.hub is not None:
            self.hub.cancel(req, expired)
        self._wake.set()

    def expire(self, req: P.Request) -> bool:
        """``req``'s deadline passed (socket thread): stop work on it. False when it changes an NPC and the engine
        took it already: it took effect and ends ``ok`` from the engine (an ``npc`` stops caching its prefix)."""
        if req.deadline is not None and isinstance(req, APPLIED_WHEN_TAKEN):
            with self._taking:
                if id(req) in self._untaken:
                    self._untaken.discard(id(req))  # the engine will skip it
                    return True
            if isinstance(req, P.NpcRequest):
                self.cancel(req, expired=True)
            return False
        self.cancel(req, expired=True)
        return True

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def roles(self) -> list[dict]:
        out: list[dict] = []
        for role, rt in self.runtimes.items():
            out.extend(rt.describe([role]))
        return out

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "budget": self.governor.stats(),
            "npcs": len(self.npcs),
            "queued": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "models": [{"name": rt.name, **rt.stats, "compute_ms": round(rt.stats["compute_ms"], 1),
                        "evictions": rt.pool.evictions, "moves": rt.pool.moves, **rt.pool.parked,
                        "free_seqs": rt.pool.free, "threads": rt.ctx.threads}
                       for rt in self._models()],
            **({"remote": self.hub.stats()} if self.hub is not None else {}),
        }

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        """The loop, guarded: a bug that escapes it is logged once, with its traceback, and ends it with
        ``failed`` set; the server then answers every open request and exits non-zero (a sidecar whose
        engine is gone must not leave requests waiting forever)."""
        try:
            self._loop()
        except Exception:
            self.failed = True
            log.critical("the engine failed; the sidecar answers its open requests and exits:\n%s",
                         traceback.format_exc())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take_cancels()
            self._take_inbox()
            self._apply_cancels()
            self._start_jobs()
            self._tick_relays()
            deciding = self.scheduler.deciding()
            pause = self.governor.wait_s(deciding=deciding)
            if pause > 0 and self.scheduler.running:  # the budget asks for a breather between steps
                self._wake.wait(min(pause, 0.05))
                self._wake.clear()
                continue
            dialogue = not deciding or self.governor.wait_s() == 0  # else only decisions may step now
            worked = False
            for rt in self._models():
                worked |= self._step(rt, dialogue)
            self.scheduler.sweep()
            if not worked:
                # Jobs waiting on a compile are polled; otherwise sleep until a request arrives.
                self._wake.wait(0.005 if self.scheduler.waiting else 0.5)
                self._wake.clear()
        for job in self.scheduler.jobs():
            job.finish(P.cancelled(job.req.id))
        self.scheduler = Scheduler()

    def _tick_relays(self) -> None:
        if self._relays or any(isinstance(job, Relay) for job in self.scheduler.running):
            now = time.monotonic()
            for job in [j for j in self.scheduler.running if isinstance(j, Relay) and not j.finished]:
                try:
                    job.tick(now)
                except NpcaiError as err:
                    job.finish(P.error(job.req.id, err))
                except Exception:
                    self._internal(job.req, job)
            self.scheduler.sweep()

    def close(self) -> None:
        if self.hub is not None:
            self.hub.close()
        for rt in self._models():
            rt.close()

    def _models(self) -> list[Runtime]:
        """Each loaded model once (roles that share a file share its runtime); remote roles are not here."""
        return list({id(rt): rt for rt in self.runtimes.values() if not _remote(rt)}.values())

    def _take_inbox(self) -> None:
        self.preemption.taken()
        burst = Burst(self._inbox)  # lines sent together are taken together (burst.py)
        while True:
            self._run_calls()  # each time: a call queued before a request is made before it is served
            try:
                req = burst.take()
            except queue.Empty:
                return
            if not self._take(req):  # its deadline passed first: answered timed out, it changes nothing
                self._cancels.pop(id(req), None)
                self.taken += 1
                continue
            if id(req) in self._cancels:
                _, expired, _ = self._cancels.pop(id(req))
                if not expired:
                    self.emit(req, P.cancelled(req.id))
                self.taken += 1
                continue
            try:
                self._handlers[type(req)](req)
            except NpcaiError as err:
                self.emit(req, P.error(req.id, err))
            except Exception:
                self._internal(req, None)
            self.taken += 1

    def _take(self, req: P.Request) -> bool:
        """Whether ``req`` may be taken: not one applied when taken whose deadline passed first (``expire``)."""
        if req.deadline is None or not isinstance(req, APPLIED_WHEN_TAKEN):
            return True
        with self._taking:
            if id(req) not in self._untaken:
                return False
            self._untaken.discard(id(req))
            return True

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            fn()

    def _take_cancels(self) -> None:
        """Move the cancellations the socket thread queued into the engine's own table. A relay's open
        sub-requests go with it (silently: the relay answers), so that a step of theirs stops too."""
        while not self._cancel_inbox.empty():
            req, expired, asked = self._cancel_inbox.get_nowait()
            self._cancels[id(req)] = (req, expired, asked)
            for sub in self._subs_of(req):
                self._cancels.setdefault(id(sub), (sub, True, asked))

    def _subs_of(self, req: P.Request) -> list[P.Request]:
        """The sub-requests open under ``req`` when it is a running relay's, and theirs in turn."""
        relays = {id(job.req): job for job in self.scheduler.running if isinstance(job, Relay)}
        out: list[P.Request] = []
        todo = [req]
        while todo:
            relay = relays.pop(id(todo.pop()), None)
            if relay is not None:
                subs = relay.open_requests()
                out.extend(subs)
                todo.extend(subs)
        return out

    def _apply_cancels(self) -> None:
        if not self._cancels:
            return
        for job in self.scheduler.jobs():
            hit = self._cancels.pop(id(job.req), None)
            if hit is not None:
                expired = hit[1]
                self.counters["expired" if expired else "cancelled"] += 1
                job.finish(job.expired_reply() if expired else job.cancelled_reply())
                self.scheduler.drop(job)
        # The rest name requests that already ended, or that are still in the inbox (kept for
        # _take_inbox); forget them once they are old enough to be the former.
        stale = time.monotonic() - _CANCEL_KEEP_S
        for key in [k for k, (_, _, asked) in self._cancels.items() if asked < stale]:
            del self._cancels[key]

    def _start_jobs(self) -> None:
        for job in self.scheduler.startable():
            self._start(job)

    def _start(self, job: Job) -> None:
        try:
            if not job.ready() or not self._seq_for(job):
                return
            if job.urgency < IDLE and not _remote(job.rt) and job.rt.pool.free == 0:
                self._drop_idle_work(job.rt)  # thinking ahead gives way for KV sequences too
            job.started_at = time.monotonic()
            job.start()
            self.counters["jobs_started"] += 1
        except NpcaiError as err:
            job.finish(P.error(job.req.id, err))
        except Exception:
            self._internal(job.req, job)
        self.scheduler.started(job)

    def _seq_for(self, job: Job) -> bool:
        """Whether a job that takes a fresh KV sequence can have one now (thinking ahead gives way first).
        Else it waits in the queue, in its turn, for a running line or decision to end and free one (its
        deadline holds: the server answers its fallback); only when nothing running on its model could free
        one is it refused ``overloaded`` at once."""
        if not job.needs_seq():
            return True
        pool = job.rt.pool
        if not pool.can_acquire() and job.urgency < IDLE:
            self._drop_idle_work(job.rt)
        if pool.can_acquire():
            return True
        if not any(j.rt is job.rt and not isinstance(j, Relay) for j in self.scheduler.running):
            raise Overloaded("no KV sequence free, and no running work to free one: too many NPCs and decisions "
                             "in flight")
        return False

    def _step(self, rt: Runtime, dialogue: bool = True) -> bool:
        """One step of one model: plan, run, sample, update. False when it had nothing to do."""
        self._shed_hopeless(rt)
        plan = self.scheduler.plan(rt, self.governor.batch_cap(), dialogue=dialogue)
        if not plan:
            return False
        threads = self.governor.threads()
        if rt.ctx.threads != threads:
            rt.ctx.set_threads(threads)
        n_tokens = sum(n for _, _, n in plan)
        started = time.monotonic()
        rt.set_abort(self.preemption.abort_check(rt, plan, self._all_cancelled))
        rt.gather([lane for _, lane, _ in plan])
        result = rt.step([(lane, n) for _, lane, n in plan])
        if result.ok:
            trees = scores_trees(lane for _, lane, _ in plan)
            rt.learn_cost(time.monotonic() - started, n_tokens, len(plan), tree=trees)
        generated = sum(1 for job, lane, _ in plan if isinstance(job, SayJob) and lane.ready)
        self.governor.after_step(time.monotonic() - started, generated)
        rt.set_abort(None)
        if not result.ok:
            self._after_failed_step(rt, plan, result.status, result.code)
            return True
        self._take_cancels()  # a cancel that came while the step ran ends its job cancelled, not with the result
        self._apply_cancels()
        fed = [job for job in {id(j): j for j, _, _ in plan}.values() if not job.finished]
        self._account(plan, fed)
        draw_together(fed)  # the sampling stage: every stream's next token at once
        self._update(fed)
        for _, lane, _ in plan:
            lane.rows = []
        return True

    def _all_cancelled(self, keys: set[int]) -> bool:
        """Whether every request of a step in flight (by ``id``) has been cancelled (engine thread)."""
        self._take_cancels()
        return keys.issubset(self._cancels.keys())

    def _after_failed_step(self, rt: Runtime, plan, status: str, code: int) -> None:
        """A step that did not run to its end changed nothing: make room or count it, and the plan runs
        again next loop (a step that failed outright ends its jobs)."""
        if status == "kv_full":  # thinking ahead and then an idle NPC give way
            self._drop_idle_work(rt)
            if rt.pool.evict_one():
                return
        elif status == "aborted":
            if self.preemption.gave_way(plan):
                self.counters["preempted_steps"] += 1
            return
        for job in {id(j): j for j, _, _ in plan}.values():
            job.overloaded(Overloaded(f"model step failed (llama_decode {code})"))

    @staticmethod
    def _account(plan, fed: list[Job]) -> None:
        now = time.monotonic()
        for job, _, n in plan:
            job.usage["evaluated_tokens"] += n
        for job in fed:
            job.usage["steps"] += 1
            job.fed_at = now

    def _update(self, fed: list[Job]) -> None:
        """Each job whose lanes have logits takes its turn: samples, emits, queues its next tokens or ends."""
        now = time.monotonic()
        for job in fed:
            if job.finished or not any(lane.ready for lane in job.lanes):
                continue
            if job.first_logits_at is None:
                job.first_logits_at = now
            try:
                job.advance()
            except NpcaiError as err:
                job.finish(P.error(job.req.id, err))
            except Exception:
                self._internal(job.req, job)
            if isinstance(job, SayJob) and job.finished:
                self._think_ahead(job)

    def _drop_idle_work(self, rt: Runtime) -> None:
        for job in self.scheduler.running:
            if job.urgency == IDLE and job.rt is rt and job.fed_at is None:
                job.finish(None)
        self.scheduler.sweep()

    def _think_ahead(self, say: SayJob) -> None:
        """Queue the evaluation of the reply's end of turn and the next turn's opening for spare steps."""
        if self.npcs.get(say.npc.id) is say.npc and len(self.scheduler) < self.limits.max_queue:
            self.scheduler.add(PrimeJob(say))

    def _shed_hopeless(self, rt: Runtime) -> None:
        """Answer with the fallback now a decision that cannot finish by its deadline, by the running
        estimate of its prompt's cost: the game gets its answer early, and the compute goes to
        decisions that can still make theirs."""
        now = time.monotonic()
        shed = 0
        for job in self.scheduler.running:
            deadline = job.req.deadline
            if (job.rt is not rt or job.urgency != DECISION or deadline is None or job.first_logits_at is not None
                    or job.finished):
                continue
            if self.preemption.hopeless(job, rt, now):
                shed += 1
                self.counters["shed"] += 1  # counted before the answer goes out: a client may ask stats next
                job.finish(P.timed_out(job.req, (now - job.req.received) * 1000))
        if shed:
            self.scheduler.sweep()

    def _internal(self, req: P.Request, job: Job | None) -> None:
        log.error("internal error serving %s %s:\n%s", req.op, req.id, traceback.format_exc())
        self.counters["jobs_failed"] += 1
        err = NpcaiError(f"internal error serving {req.op}; the sidecar keeps running")
        if job is not None:
            job.finish(P.error(req.id, err))
        else:
            self.emit(req, P.error(req.id, err))

    # --- one handler per request type ------------------------------------------------------
    def _npc(self, npc_id: str | None, required: bool = True) -> Npc:
        if npc_id is None and not required:
            return self.anonymous
        npc = self.npcs.get(npc_id)
        if npc is None:
            raise UnknownNpc(f"no NPC {npc_id!r}; define it first with op 'npc'")
        return npc

    def _check_room(self, npc_id: str) -> None:
        if npc_id not in self.npcs and len(self.npcs) >= self.limits.max_npcs:
            raise Overloaded(f"max_npcs={self.limits.max_npcs} NPCs are defined: give a new character one "
                             "of their names (npc or load replaces that NPC), or start the sidecar with a larger "
                             "--max-npcs")

    def _install(self, npc: Npc) -> Npc:
        """Define (or redefine) an NPC; a redefined one keeps its KV sequences, and the new
        prompt reuses whatever of them still matches."""
        old = self.npcs.get(npc.id)
        if old is not None:
            npc.kv, npc.slot = old.kv, old.slot
        self.npcs[npc.id] = npc
        return npc

    def _queue(self, job: Job) -> None:
        """Queue a request's job. ``max_queue`` bounds clients' open requests: the sidecar's own work ahead (added
        to the scheduler directly) and a relay's sub-requests (the relay is counted) take none of it."""
        job.counted = id(job.req) not in self._dispatching
        limit = self.limits.max_queue
        if job.counted and len(self.scheduler) >= limit and sum(j.counted for j in self.scheduler.jobs()) >= limit:
            raise Overloaded(f"queue is full ({limit} requests)")
        self.scheduler.add(job)
        if isinstance(job, Relay):  # it computes nothing: its first sub-requests are made now, in the order the
            self._start(job)  # requests arrived, so that one sent after it to the same NPC cannot overtake them

    def _emitter(self, req: P.Request, *, remote: bool = False) -> Callable[[dict[str, Any]], None]:
        """Where ``req``'s replies go: its relay (a sub-request), else its client. ``remote``: a remote role
        answers it from its own loop, and a relay hears it on the engine thread, which owns relays and NPCs."""
        relay = self._relays.pop(id(req), None)
        if relay is None:
            return lambda reply: self.emit(req, reply)
        if remote:
            return lambda reply: self.call_soon(lambda: relay(reply))
        return relay

    def _on_npc(self, req: P.NpcRequest) -> None:
        """Every check comes before ``_install``: a refused definition leaves the NPC it would replace (or its
        absence) as it was."""
        self._check_room(req.npc)
        rt = self.admission.runtime("npc", req.role)
        if not _remote(rt):
            self.admission.prompt(rt, req.persona)
        declared = actions.check_actions(req.actions, self.admission.runtime("decide", None), self.limits)
        if _remote(rt):  # nothing to evaluate here: the engine caches the prefix on first use
            npc = self._install(Npc(req.npc, req.persona, req.role or "dialogue", req.seed,
                                    examples=list(req.examples or []), actions=declared))
            return self.emit(req, P.ok(req.id, npc=npc.id, cached_tokens=0))
        npc = Npc(req.npc, req.persona, req.role or "dialogue", req.seed, examples=list(req.examples or []),
                  actions=declared)
        self.admission.definition(rt, npc, self.settings.npc_ctx)
        self._queue(DefineJob(req, rt, self._emitter(req), self.settings.npc_ctx, npc))
        self._install(npc)  # before any later request is taken: it finds the NPC as this definition leaves it
        if declared:
            self._score_action_priors(npc)

    def _score_action_priors(self, npc: Npc) -> None:
        """Queue, for spare steps, the priors of the NPC's usual action decisions, whose options are known now:
        its first action then costs what a later one does."""
        rt = self.admission.runtime("decide", None)
        if _remote(rt):
            return
        for fields in actions.choice_sets(npc):
            if len(self.scheduler) >= self.limits.max_queue // 2:  # requests keep the other half (a save of many NPCs)
                return
            message = {"v": P.VERSION, "id": 0, "op": "decide", "npc": npc.id, "situation": CONTENT_FREE, **fields}
            req = P.parse_request(message, b"", time.monotonic())
            self.scheduler.add(ChoicePriorJob(req, rt, lambda reply: None, self.settings.npc_ctx, npc))

    def _on_say(self, req: P.SayRequest) -> None:
        npc = self._npc(req.npc)
        rt = self.admission.runtime("say", req.role or npc.role)
        if req.actions:  # a relay: its line and its decisions are sub-requests, to local or remote roles alike
            names = actions.allowed(npc, req.actions)
            return self._queue(actions.ActionLine(req, rt, self._emitter(req), self.settings.npc_ctx, self, npc, names))
        if _remote(rt):
            return self.hub.submit(rt, req, npc, self._emitter(req, remote=True))
        self.admission.prompt(rt, req.text)
        self._queue(SayJob(req, rt, self._emitter(req), self.settings.npc_ctx, npc))

    def _on_decide(self, req: P.DecideRequest) -> None:
        npc = self._relay_npcs.get(id(req)) or self._npc(req.npc, required=False)
        rt = self.admission.runtime("decide", req.role)
        if req.actions not in (None, False):  # a relay, as a say with actions
            names = actions.allowed(npc, req.actions)
            return self._queue(actions.ActionDecision(req, rt, self._emitter(req), self.settings.npc_ctx, self, npc,
                                                      names))
        if _remote(rt):
            return self.hub.submit(rt, req, npc, self._emitter(req, remote=True))
        self.admission.prompt(rt, req.situation)
        emit = self._emitter(req)
        if req.choices is not None:
            job: Job = ChoiceDecideJob(req, rt, emit, self.settings.npc_ctx, npc)
        else:
            job = GrammarDecideJob(req, rt, emit, self.settings.npc_ctx, npc, self.admission.constraint(rt, req))
        try:
            self._queue(job)
        except NpcaiError:
            job.finish(None)
            raise

    def _on_observe(self, req: P.ObserveRequest) -> None:
        npc = self._npc(req.npc)
        rt = self.admission.runtime("observe", npc.role)
        if not _remote(rt):
            self.admission.prompt(rt, req.text)
        npc.messages.append(("user", f"(You notice: {req.text.strip()})"))
        self._evaluate_later(req, rt, npc)

    def _evaluate_later(self, req: P.Request, rt: Runtime, npc: Npc) -> None:
        """Answer ok now; the NPC's history, grown by ``req``, is evaluated in spare steps."""
        emit = self._emitter(req)
        emit(P.ok(req.id, npc=npc.id))
        if not _remote(rt) and len(self.scheduler) < self.limits.max_queue:
            self.scheduler.add(ObserveJob(req, rt, emit, self.settings.npc_ctx, npc))

    def _on_chain(self, req: P.ChainRequest) -> None:
        chain.check_chain(req.steps, self.limits, self.role_info, set(self.runtimes))
        self._queue(chain.Chain(req, self.admission.runtime("decide", None), self._emitter(req),
                                self.settings.npc_ctx, self))

    def _on_act_result(self, req: P.ActResultRequest) -> None:
        npc = self._npc(req.npc)
        rt = self.admission.runtime("observe", npc.role)
        if not _remote(rt):
            self.admission.prompt(rt, req.result)
        actions.record_result(npc, req.name, req.result)
        self._evaluate_later(req, rt, npc)

    def _on_forget(self, req: P.ForgetRequest) -> None:
        self._npc(req.npc).forget()
        self.emit(req, P.ok(req.id, npc=req.npc))

    def _on_save(self, req: P.SaveRequest) -> None:
        npc = self._npc(req.npc)
        self.emit(req, P.ok(req.id, npc=npc.id, state=npc.save()))

    def _on_load(self, req: P.LoadRequest) -> None:
        """A save is checked as the ``npc`` it stands for (a player may have edited it), before ``_install``."""
        self._check_room(req.npc)
        npc = Npc.load(req.npc, req.state)
        P.check_examples({"examples": npc.examples}, self.limits)
        npc.actions = actions.check_actions(list(npc.actions.values()), self.admission.runtime("decide", None),
                                            self.limits)
        rt = self.admission.runtime("npc", npc.role)
        if not _remote(rt):
            self.admission.definition(rt, npc, self.settings.npc_ctx)
        self._install(npc)
        if npc.actions:  # queued before the ok: a client that waits for the sidecar to be idle after it waits for them
            self._score_action_priors(npc)
        self.emit(req, P.ok(req.id, npc=npc.id, messages=len(npc.messages)))


def _remote(rt: "Runtime | RemoteRole") -> bool:
    """Whether an engine serves the role (npcai/remote/) rather than a model loaded here."""
    return not isinstance(rt, Runtime)
