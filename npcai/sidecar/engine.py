"""The engine: NPCs, models by role, and the loop that steps them. No sockets here.

Requests come in through ``submit`` and cancellations through ``cancel`` (both safe
to call from another thread); replies go out through the ``emit(client, reply)``
callback. ``run()`` is the engine's busy loop:

1. take new requests and cancellations,
2. start the jobs that can start (most urgent first),
3. run one batched model step per model that has work, and let each job consume its logits,
4. sleep only when there is nothing to do.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from npcai import protocol as P
from npcai.errors import BadRequest, NpcaiError, Overloaded, TooLarge, UnknownNpc
from npcai.model import catalog, choices
from npcai.model.runtime import Runtime
from npcai.remote.spec import Remote
from npcai.model.sampling import sample_tokens
from npcai.sidecar.budget import Governor
from npcai.sidecar.jobs import (
    DECISION,
    IDLE,
    ChoiceDecideJob,
    DefineJob,
    GrammarDecideJob,
    Job,
    ObserveJob,
    PrimeJob,
    SayJob,
    _check_prompt,
    pending_tokens,
)
from npcai.sidecar.npc import ANONYMOUS_PERSONA, Npc
from npcai.sidecar.scheduler import Scheduler
from npcai.sidecar.settings import Settings

log = logging.getLogger("npcai")

EmitFn = Callable[[P.Request, dict[str, Any]], None]

if TYPE_CHECKING:
    from npcai.remote.role import Hub, RemoteRole

#: The role each op uses when the request (or its NPC) names none.
DEFAULT_ROLES = {"npc": "dialogue", "say": "dialogue", "observe": "dialogue", "decide": "decision"}

_CANCEL_KEEP_S = 5.0  # how long a cancellation waits for a request still in the inbox
_ABORT_MIN_TOKENS = 16  # steps this large take long enough to be worth aborting mid-way
_DECISION_TOKENS = 20  # a typical decision prompt (a situation and the chat template), for estimates
_PATIENCE_S = 0.25  # how long a decision without a deadline may wait for a dialogue step to finish
_SHED_MARGIN = 0.8  # shed a decision when even 80 % of its estimated cost would overrun its deadline


class Engine:
    def __init__(self, settings: Settings, models: dict[str, Path | Remote], emit: EmitFn):
        """``models`` maps role -> GGUF path (roles sharing a file share one runtime) or -> ``Remote``, an
        engine that serves the role (npcai/remote/)."""
        self.settings = settings
        self.limits = settings.limits
        self.emit = emit
        self.runtimes: dict[str, Runtime | RemoteRole] = {}
        remotes = {role: m for role, m in models.items() if isinstance(m, Remote)}
        self.hub: Hub | None = None
        if remotes:
            from npcai.remote.role import Hub  # httpx only where a role is remote

            self.hub = Hub(remotes, Path(settings.grammar_dir), connections=settings.remote_connections,
                           client_tokens_per_s=settings.client_tokens_per_s)
        by_path: dict[Path, Runtime] = {}
        for role, path in models.items():
            if isinstance(path, Remote):
                self.runtimes[role] = self.hub.roles[role]
                continue
            rt = by_path.get(path)
            if rt is None:
                entry = catalog.entry_for(path)
                rt = Runtime(path, name=entry.name if entry else path.stem, n_ctx=settings.n_ctx,
                             n_seq=settings.n_seq, n_batch=settings.n_batch, threads=settings.compute_threads,
                             grammar_dir=Path(settings.grammar_dir), flash_attn=entry.flash_attn if entry else None,
                             park_bytes=settings.park_mb * 2**20,
                             choice_temperature=entry.choice_temperature if entry else choices.DEFAULT_TEMPERATURE)
                by_path[path] = rt
            self.runtimes[role] = rt
        self._default = next(iter(self.runtimes.values()))
        self.governor = Governor(settings.budget, settings.compute_threads, settings.n_batch)
        self.npcs: dict[str, Npc] = {}
        self._anonymous = Npc("", ANONYMOUS_PERSONA)
        self.scheduler = Scheduler()
        self._inbox: queue.SimpleQueue[P.Request] = queue.SimpleQueue()
        # Cancellations arrive through a queue, and only the engine thread touches the table it fills:
        # id(request) -> (request, expired?, when it was asked), keyed by the request itself, since a
        # client may reuse an id.
        self._cancel_inbox: queue.SimpleQueue[tuple[P.Request, bool, float]] = queue.SimpleQueue()
        self._cancels: dict[int, tuple[P.Request, bool, float]] = {}
        self._urgent = False  # a decision arrived: a step of dialogue prefill may be preempted for it...
        self._urgent_by = math.inf  # ...when it must start by then (the earliest such, monotonic)
        self._arrived = False  # any request arrived: a step of idle work (thinking ahead) gives way
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._handlers = {"npc": self._on_npc, "say": self._on_say, "decide": self._on_decide,
                          "observe": self._on_observe, "forget": self._on_forget, "save": self._on_save,
                          "load": self._on_load}
        self.counters = {"jobs_started": 0, "jobs_failed": 0, "cancelled": 0, "expired": 0, "preempted_steps": 0,
                         "shed": 0}
        self.failed = False  # the loop ended on a bug: nothing will be answered any more

    # --- thread-safe entry points -----------------------------------------------------
    def submit(self, req: P.Request) -> None:
        self._inbox.put(req)
        self._arrived = True
        if req.op == "decide":
            by = req.deadline if req.deadline is not None else time.monotonic() + _PATIENCE_S
            self._urgent_by = min(self._urgent_by, by)
            self._urgent = True
        self._wake.set()

    def cancel(self, req: P.Request, *, expired: bool = False) -> None:
        """Stop work on a request; a client's cancel is answered with ``cancelled``, an expiry silently."""
        self._cancel_inbox.put((req, expired, time.monotonic()))
        if self.hub is not None:
            self.hub.cancel(req, expired)
        self._wake.set()

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

    def close(self) -> None:
        if self.hub is not None:
            self.hub.close()
        for rt in self._models():
            rt.close()

    def _models(self) -> list[Runtime]:
        """Each loaded model once (roles that share a file share its runtime); remote roles are not here."""
        return list({id(rt): rt for rt in self.runtimes.values() if not _remote(rt)}.values())

    def _take_inbox(self) -> None:
        self._arrived = False
        self._urgent = False
        self._urgent_by = math.inf
        while True:
            try:
                req = self._inbox.get_nowait()
            except queue.Empty:
                return
            if id(req) in self._cancels:
                _, expired, _ = self._cancels.pop(id(req))
                if not expired:
                    self.emit(req, P.cancelled(req.id))
                continue
            try:
                self._handlers[req.op](req)
            except NpcaiError as err:
                self.emit(req, P.error(req.id, err))
            except Exception:
                self._internal(req, None)

    def _take_cancels(self) -> None:
        """Move the cancellations the socket thread queued into the engine's own table."""
        while not self._cancel_inbox.empty():
            req, expired, asked = self._cancel_inbox.get_nowait()
            self._cancels[id(req)] = (req, expired, asked)

    def _apply_cancels(self) -> None:
        if not self._cancels:
            return
        for job in self.scheduler.jobs():
            hit = self._cancels.pop(id(job.req), None)
            if hit is not None:
                expired = hit[1]
                self.counters["expired" if expired else "cancelled"] += 1
                job.finish(None if expired else P.cancelled(job.req.id))
                self.scheduler.drop(job)
        # The rest name requests that already ended, or that are still in the inbox (kept for
        # _take_inbox); forget them once they are old enough to be the former.
        stale = time.monotonic() - _CANCEL_KEEP_S
        for key in [k for k, (_, _, asked) in self._cancels.items() if asked < stale]:
            del self._cancels[key]

    def _start_jobs(self) -> None:
        for job in self.scheduler.startable():
            try:
                if not job.ready():
                    continue
                if job.urgency < IDLE and job.rt.pool.free == 0:
                    self._drop_idle_work(job.rt)  # thinking ahead gives way for KV sequences too
                job.started_at = time.monotonic()
                job.start()
                self.counters["jobs_started"] += 1
            except NpcaiError as err:
                job.finish(P.error(job.req.id, err))
            except Exception:
                self._internal(job.req, job)
            self.scheduler.started(job)

    def _step(self, rt: Runtime, dialogue: bool = True) -> bool:
        self._shed_hopeless(rt)
        plan = self.scheduler.plan(rt, self.governor.batch_cap(), dialogue=dialogue)
        if not plan:
            return False
        threads = self.governor.threads()
        if rt.ctx.threads != threads:
            rt.ctx.set_threads(threads)
        keys = {id(job.req) for job, _, _ in plan}
        n_tokens = sum(n for _, _, n in plan)
        big = n_tokens >= _ABORT_MIN_TOKENS
        # A long step is stopped mid-way when all its requests are cancelled, or when a decision
        # arrives (and the step holds none) that would miss its deadline if it waited for the rest of
        # the step: the decision then goes first and the step is redone. A step that leaves the
        # decision time enough is left to finish, since redoing it wastes its compute; so is one the
        # decision could not be saved by.
        preemptible = not any(job.urgency == DECISION for job, _, _ in plan)
        idle = all(job.urgency == IDLE for job, _, _ in plan)  # thinking ahead gives way to any request
        started = time.monotonic()
        expected_end = started + rt.estimate_s(n_tokens)
        decision_s = rt.estimate_s(_DECISION_TOKENS)

        def should_abort() -> bool:  # called by llama.cpp on this thread, mid-step
            self._take_cancels()
            if keys.issubset(self._cancels.keys()) or (idle and self._arrived):
                return True
            if not (preemptible and self._urgent):
                return False
            now = time.monotonic()
            slack = self._urgent_by - now - decision_s
            return 0 < slack < expected_end - now

        rt.ctx.set_abort(should_abort if big or idle else None)
        rt.gather([lane for _, lane, _ in plan])
        rc = rt.step([(lane, n) for _, lane, n in plan])
        if rc == 0:
            rt.learn_cost(time.monotonic() - started, n_tokens)
        generated = sum(1 for job, lane, _ in plan if isinstance(job, SayJob) and lane.ready)
        self.governor.after_step(time.monotonic() - started, generated)
        rt.ctx.set_abort(None)
        if rc == 1:  # KV full: thinking ahead and then an idle NPC give way, the plan runs next loop
            self._drop_idle_work(rt)
            if rt.pool.evict_one():
                return True
        if rc == 2 and preemptible and self._urgent:
            self.counters["preempted_steps"] += 1
        if rc != 0:
            if rc != 2:
                for job in {id(j): j for j, _, _ in plan}.values():
                    job.finish(P.error(job.req.id, Overloaded(f"model step failed (llama_decode {rc})")))
            return True
        now = time.monotonic()
        fed = {id(j): j for j, lane, _ in plan}
        for job, _, n in plan:
            job.usage["evaluated_tokens"] += n
        for job in fed.values():
            job.usage["steps"] += 1
            job.fed_at = now
        self._draw_together(fed.values())
        for job in fed.values():
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
        for _, lane, _ in plan:
            lane.rows = []
        return True

    @staticmethod
    def _draw_together(jobs) -> None:
        """Sample the next token of every stream the step fed at once (see ``sample_tokens``)."""
        streams = [job for job in jobs if isinstance(job, SayJob) and not job.finished and job.lanes
                   and job.lanes[0].ready]
        if len(streams) > 1:
            for job, tok in zip(streams, sample_tokens([job.draw() for job in streams])):
                job.drawn = tok

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
            if now + _SHED_MARGIN * rt.estimate_s(pending_tokens(job)) > deadline:
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

    # --- ops ----------------------------------------------------------------------------
    def _runtime(self, op: str, role: str | None) -> Runtime | RemoteRole:
        role = role or DEFAULT_ROLES[op]
        rt = self.runtimes.get(role)
        if rt is None:
            if role in DEFAULT_ROLES.values():
                return self._default
            raise BadRequest(f"no model serves role {role!r}; roles: {', '.join(self.runtimes)}")
        return rt

    def _npc(self, req: P.Request, required: bool = True) -> Npc:
        npc_id = req.fields.get("npc")
        if npc_id is None and not required:
            return self._anonymous
        npc = self.npcs.get(npc_id)
        if npc is None:
            raise UnknownNpc(f"no NPC {npc_id!r}; define it first with op 'npc'")
        return npc

    def _check_room(self, npc_id: str) -> None:
        if npc_id not in self.npcs and len(self.npcs) >= self.limits.max_npcs:
            raise Overloaded(f"max_npcs={self.limits.max_npcs} NPCs are defined; forget or reuse one")

    def _install(self, npc: Npc) -> Npc:
        """Define (or redefine) an NPC; a redefined one keeps its KV sequences, and the new
        prompt reuses whatever of them still matches."""
        old = self.npcs.get(npc.id)
        if old is not None:
            npc.kv, npc.slot = old.kv, old.slot
        self.npcs[npc.id] = npc
        return npc

    def _queue(self, job: Job) -> None:
        if len(self.scheduler) >= self.limits.max_queue:
            raise Overloaded(f"queue is full ({self.limits.max_queue} requests)")
        self.scheduler.add(job)

    def _emitter(self, req: P.Request) -> Callable[[dict[str, Any]], None]:
        return lambda reply: self.emit(req, reply)

    def _on_npc(self, req: P.Request) -> None:
        f = req.fields
        self._check_room(f["npc"])
        rt = self._runtime("npc", f.get("role"))
        P.check_examples(f, self.limits)
        if _remote(rt):  # nothing to evaluate here: the engine caches the prefix on first use
            npc = self._install(Npc(f["npc"], f["persona"], f.get("role") or "dialogue", f.get("seed"),
                                    examples=list(f.get("examples", []))))
            return self.emit(req, P.ok(req.id, npc=npc.id, cached_tokens=0))
        _check_prompt(rt, f["persona"], self.limits.max_prompt_tokens)
        npc = self._install(Npc(f["npc"], f["persona"], f.get("role") or "dialogue", f.get("seed"),
                                examples=list(f.get("examples", []))))
        self._queue(DefineJob(req, rt, self._emitter(req), self.settings.npc_ctx, npc))

    def _on_say(self, req: P.Request) -> None:
        npc = self._npc(req)
        P.check_sampling(req.fields, self.limits)
        rt = self._runtime("say", req.fields.get("role") or npc.role)
        if _remote(rt):
            return self.hub.submit(rt, req, npc, self._emitter(req))
        _check_prompt(rt, req.fields["text"], self.limits.max_prompt_tokens)
        self._queue(SayJob(req, rt, self._emitter(req), self.settings.npc_ctx, npc))

    def _on_decide(self, req: P.Request) -> None:
        npc = self._npc(req, required=False)
        P.check_sampling(req.fields, self.limits)
        rt = self._runtime("decide", req.fields.get("role"))
        if _remote(rt):
            return self.hub.submit(rt, req, npc, self._emitter(req))
        _check_prompt(rt, req.fields["situation"], self.limits.max_prompt_tokens)
        emit = self._emitter(req)
        if "choices" in req.fields:
            job: Job = ChoiceDecideJob(req, rt, emit, self.settings.npc_ctx, npc)
        else:
            kind, grammar = rt.compiler.source_for(req.fields)
            job = GrammarDecideJob(req, rt, emit, self.settings.npc_ctx, npc, rt.compiler.submit(kind, grammar))
        try:
            self._queue(job)
        except NpcaiError:
            job.finish(None)
            raise

    def _on_observe(self, req: P.Request) -> None:
        npc = self._npc(req)
        rt = self._runtime("observe", npc.role)
        if not _remote(rt):
            _check_prompt(rt, req.fields["text"], self.limits.max_prompt_tokens)
        npc.messages.append(("user", f"(You notice: {req.fields['text'].strip()})"))
        self.emit(req, P.ok(req.id, npc=npc.id))
        if not _remote(rt) and len(self.scheduler) < self.limits.max_queue:
            self.scheduler.add(ObserveJob(req, rt, self._emitter(req), self.settings.npc_ctx, npc))

    def _on_forget(self, req: P.Request) -> None:
        self._npc(req).forget()
        self.emit(req, P.ok(req.id, npc=req.fields["npc"]))

    def _on_save(self, req: P.Request) -> None:
        npc = self._npc(req)
        self.emit(req, P.ok(req.id, npc=npc.id, state=npc.save()))

    def _on_load(self, req: P.Request) -> None:
        f = req.fields
        if len(f["state"]) > self.limits.max_frame_bytes:
            raise TooLarge("state is larger than a frame may be")
        self._check_room(f["npc"])
        npc = self._install(Npc.load(f["npc"], f["state"]))
        self.emit(req, P.ok(req.id, npc=npc.id, messages=len(npc.messages)))


def _remote(rt: "Runtime | RemoteRole") -> bool:
    """Whether an engine serves the role (npcai/remote/) rather than a model loaded here."""
    return not isinstance(rt, Runtime)
