"""The server: a ZeroMQ ROUTER socket around the engine.

The socket thread owns the socket and everything that must answer in microseconds
whatever the model is doing: decoding and validating frames, hello/ping/stats/
cancel/shutdown, admission limits, and deadlines. The engine runs model steps on
its own thread (llama.cpp releases the GIL while it computes). When a request's
deadline passes, this thread answers with the fallback at once and tells the
engine to drop the work, so no answer is ever late, however long a step takes.

Loop: 1) wait on the socket, the engine's outbox signal (while the engine has requests to
answer) and the next deadline;
2) read frames and admit requests; 3) send the engine's replies; 4) expire deadlines;
5) forget clients that went away (a socket monitor reports a dropped connection, a failed reply a
client that left; their open requests are dropped); 6) check the parent
process, the lease, and that the engine still runs (if it failed, every open request is
answered and the sidecar exits with code 1).

Hygiene (docs/RELIABILITY.md): every table here is bounded or emptied when a request
ends or its client goes away; libzmq's own queues are capped in messages and bytes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from npcai import __version__
from npcai import protocol as P
from npcai.errors import BadRequest, NpcaiError, Overloaded, Unauthorized
from npcai.remote.direct import DirectRoute
from npcai.sidecar import curve, parent
from npcai.sidecar.auth import TokenAuth
from npcai.sidecar.connections import Connections
from npcai.sidecar.curve import load_curve_allowed, load_curve_secret  # noqa: F401  (their old home)
from npcai.sidecar.engine import APPLIED_WHEN_TAKEN, Engine
from npcai.sidecar.opstats import OpStats
from npcai.sidecar.outbox import Outbox
from npcai.sidecar.settings import Settings

log = logging.getLogger("npcai")

_MAX_READS_PER_TURN = 256
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's enum flags cost microseconds a test
_SRCFD = int(zmq.SRCFD)
# libzmq's per-client queues, in messages: with frames capped at 2 x max_frame_bytes, one
# client can make the sidecar hold at most RCVHWM such frames (then TCP pushes back).
_RCVHWM = 128
_SNDHWM = 1000
_WARN_EVERY_S = 5.0
_FAILED_LINGER_S = 0.5  # after the engine fails, requests already on their way still get an answer
# How often, at most, the clients heard are placed on their connections when none dropped (the socket
# monitor's events wake the loop at once while requests are open).
_DEPARTURES_EVERY_S = 0.005
_UNREAD_S = 1.0  # at a stop, how long requests that arrived unread are answered cancelled
# How long a thread running Python keeps the GIL from one that wants it (CPython's default is 5 ms).
# The socket thread answers in about 0.2 ms, but while another thread runs Python (the vocabulary
# scan after a model loads, the engine's step bookkeeping), each reply waited for a whole 5 ms
# interval: Gemma's 262k-token scan put 24 hellos in a row at 5.2-5.4 ms (docs/PERFORMANCE.md).
_GIL_SWITCH_S = 0.0005


@dataclass
class _Inflight:
    req: P.Request
    streamed: list[str] = field(default_factory=list)


#: Ops that act on the whole sidecar, not on a client's own requests: with --curve-admin, the admins' alone.
_ADMIN_OPS = frozenset({"shutdown", "budget", "frame"})

def _ipc_answers(endpoint: str) -> bool:
    """Whether something listens at an ``ipc://`` endpoint's path (a file left by a killed sidecar does not)."""
    path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else ""
    if not path or path.startswith("@") or not hasattr(socket, "AF_UNIX") or not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _ipc_file(endpoint: str) -> tuple[str, tuple[int, int]] | None:
    """The file an ``ipc://`` endpoint just bound made (its path and identity); None for other endpoints, the
    abstract namespace (``@``), and ``ipc://*`` (libzmq's own temporary file, which it removes itself)."""
    path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else ""
    if not path or path.startswith("@") or path == "*":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, (st.st_dev, st.st_ino)


class Server:
    def __init__(self, settings: Settings, engine_factory, polite: dict | None = None):
        """``engine_factory(emit)`` builds the Engine; it is given this server's emit callback.

        ``polite`` says what CPU priority and affinity the process runs with (for ``hello``).
        """
        self.polite = polite or {"nice": 0, "cpus": None}
        self._hello: tuple[object, Callable[[int | None], bytes]] | None = None  # (budget, its reply's encoder)
        self.settings = settings
        self.limits = settings.limits
        self._zctx = zmq.Context.instance()
        self._router = self._zctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.MAXMSGSIZE, 2 * self.limits.max_frame_bytes)  # hard cap: drop the peer
        self._router.setsockopt(zmq.SNDHWM, _SNDHWM)
        self._router.setsockopt(zmq.RCVHWM, _RCVHWM)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a client that left fails: forget it
        self._connections = Connections(self._zctx, self._router)  # and a dropped connection's clients at once
        self._rcvtimeo = -1  # the socket's receive timeout as last set (ms; -1 = block)
        self._auth = None
        self._admins: set[str] | None = None  # with --curve-admin: the keys that may use the sidecar-wide ops
        self.curve_public_key = ""
        if settings.curve_secret_key:  # before the engine: a bad key file fails before any model loads
            self._auth, self.curve_public_key, self._admins = curve.secure(self._zctx, self._router, settings)
        self._outbox = Outbox(self._zctx)  # the engine's replies
        self.engine: Engine = engine_factory(self._outbox.emit)
        self._route = DirectRoute(self.engine)  # a remote role's say or decide may skip the engine thread
        self._inflight: dict[tuple[bytes, int], _Inflight] = {}
        self._per_client: collections.Counter[bytes] = collections.Counter()
        # heap of (deadline, tie-break, key, entry): an entry that ended early stays until compacted
        self._deadlines: list[tuple[float, int, tuple[bytes, int], _Inflight]] = []
        self._tiebreak = itertools.count()
        self._token = TokenAuth(settings.token)
        self._gone: set[bytes] = set()
        self._stats: dict[str, OpStats] = collections.defaultdict(OpStats)
        self._bad_frames = 0
        self._dropped_replies = 0
        self._next_drop_warning = 0.0
        self._started = time.monotonic()
        self._last_heard: float | None = None  # the lease starts at the first hello
        self.exit_reason = ""
        self.exit_code = 0  # 1 once the engine has failed
        self._exit_at = 0.0  # when a server whose engine failed stops answering and exits
        self._running = True  # set before READY is printed: a signal may arrive before the loop starts
        self.endpoint = ""
        self._ipc_file: tuple[str, tuple[int, int]] | None = None  # removed at exit: libzmq leaves it
        self._immediate: dict[type[P.Request], Callable[[Any], None]] = {
            P.HelloRequest: self._on_hello, P.PingRequest: self._on_ping, P.CancelRequest: self._on_cancel,
            P.StatsRequest: self._on_stats, P.ShutdownRequest: self._on_shutdown, P.BudgetRequest: self._on_budget,
            P.FrameRequest: self._on_frame}

    # --- lifecycle -----------------------------------------------------------------------------
    def bind(self) -> str:
        if P.is_ipv6_endpoint(self.settings.endpoint):
            self._router.setsockopt(zmq.IPV6, 1)
        if _ipc_answers(self.settings.endpoint):  # libzmq would unlink it and take it from under its owner
            raise BadRequest(f"cannot bind {self.settings.endpoint}: endpoint in use (another process listens there)")
        try:
            self._router.bind(self.settings.endpoint)
        except zmq.ZMQError as exc:
            raise BadRequest(f"cannot bind {self.settings.endpoint}: {exc.strerror}") from None
        self.endpoint = self._router.getsockopt(zmq.LAST_ENDPOINT).decode()
        if self.endpoint.startswith("inproc://"):  # embedded: no fds, no connection events (and SRCFD fails)
            self._connections.tracking = False
        self._ipc_file = _ipc_file(self.settings.endpoint)
        return self.endpoint

    def stop(self, reason: str = "") -> None:
        """Ask the loop to end (safe from a signal handler); in-flight requests end as cancelled."""
        self.exit_reason = self.exit_reason or reason
        self._running = False

    def serve_forever(self) -> int:
        """Run until shutdown; the engine runs on its own thread meanwhile. Returns the exit code: 0, or 1
        when the engine failed."""
        switch_interval = sys.getswitchinterval()  # put back at the end: an embedding process keeps its own
        sys.setswitchinterval(_GIL_SWITCH_S)  # the socket thread waits at most this long for the GIL
        engine_thread = threading.Thread(target=self._run_engine, name="npcai-engine", daemon=True)
        engine_thread.start()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._outbox.pull, zmq.POLLIN)
        poller.register(self._connections.events, zmq.POLLIN)  # a client whose request runs may leave
        next_parent_check = departures_due = 0.0
        lease = self.settings.lease_ms / 1000.0
        try:
            while self._running:
                timeout = self._poll_timeout()
                if self._inflight:
                    events = dict(poller.poll(timeout))
                    dropped = self._connections.events in events  # a client whose request runs left
                    if self._outbox.pull in events:
                        self._outbox.drain_signals()
                    self._send_replies()
                    if self._router in events:
                        self._read_requests()
                else:
                    # Nothing for the engine to answer: wait on the socket alone. A blocking read
                    # answers a lone hello or ping 10-15 µs sooner than a poll of two sockets.
                    self._outbox.replies.clear()  # replies to requests already answered at their deadlines
                    dropped = False
                    if self._read_one(timeout):
                        self._read_requests()
                self._expire_deadlines()
                now = time.monotonic()
                if dropped or now >= departures_due:  # reading the monitor costs more than a round trip's 2 %
                    departures_due = now + _DEPARTURES_EVERY_S
                    self._gone |= self._connections.departed()
                self._forget_gone_clients()
                if self.settings.parent_pid and now >= next_parent_check:
                    next_parent_check = now + 0.5
                    if not parent.alive(self.settings.parent_pid):
                        self.stop(f"parent process {self.settings.parent_pid} is gone")
                if lease and self._last_heard is not None and now - self._last_heard > lease:
                    self.stop(f"no client heard from for {self.settings.lease_ms} ms (--lease-ms)")
                if self.engine.failed or not engine_thread.is_alive():
                    self._engine_gone(now)
        finally:
            if self.exit_reason:
                log.warning("%s; shutting down", self.exit_reason)
            self._shutdown(engine_thread)
            sys.setswitchinterval(switch_interval)
        return self.exit_code

    def _run_engine(self) -> None:
        try:
            self.engine.run()
        finally:  # wake the socket thread, which sees that the engine has ended
            self._outbox.signal()

    def _engine_gone(self, now: float) -> None:
        """The engine ended without being asked to (a bug, logged there): answer every open request and,
        for a moment, every new one, then exit with code 1 so that a launcher restarts the sidecar."""
        if not self.exit_code:
            self.exit_code = 1
            self._exit_at = now + _FAILED_LINGER_S
            self._send_replies()  # what the engine said before it failed
        for key, entry in list(self._inflight.items()):
            reply = P.with_streamed(P.engine_failed(entry.req, (now - entry.req.received) * 1e3), entry.req,
                                    entry.streamed)
            self._finish(key, entry, reply["event"])
            self._send(key[0], reply)
        if now >= self._exit_at:
            self.stop("the engine failed")

    def _shutdown(self, engine_thread: threading.Thread) -> None:
        self.engine.stop()
        engine_thread.join(timeout=5)
        self._send_replies()
        for (client, rid), _ in list(self._inflight.items()):  # whatever the engine did not end
            self._send(client, P.cancelled(rid))
        self._inflight.clear()
        self._cancel_unread()
        self.engine.close()
        self._connections.close()
        self._router.close(linger=100)
        self._remove_ipc_file()
        self._outbox.close()
        if self._auth is not None:
            self._auth.stop()

    def _cancel_unread(self) -> None:
        """Requests that arrived but were not read when the loop ended (a stop between two reads) are open
        too, to their clients: they end as cancelled, as the in-flight ones do, not in a client's timeout.
        All of them (up to 128 per connection wait in libzmq), for at most _UNREAD_S: a client that keeps
        sending must not hold the exit."""
        give_up = time.monotonic() + _UNREAD_S
        while time.monotonic() < give_up:
            try:
                parts = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            rid = P.salvage_id(parts[-1]) if len(parts) == 2 else None
            if rid is not None:
                self._send(parts[0], P.cancelled(rid))

    def _remove_ipc_file(self) -> None:
        """libzmq leaves the file of an ipc endpoint it bound; remove it, unless another process has since
        bound the path (another file there now)."""
        if self._ipc_file is None:
            return
        path, identity = self._ipc_file
        self._ipc_file = None
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == identity:
                os.unlink(path)

    def _poll_timeout(self) -> int:
        timeout = 500.0
        now = time.monotonic()
        if self._deadlines:
            timeout = min(timeout, max(0.0, (self._deadlines[0][0] - now) * 1000))
        if self.settings.lease_ms and self._last_heard is not None:
            timeout = min(timeout, max(0.0, self._last_heard * 1000 + self.settings.lease_ms - now * 1000))
        if self.exit_code:
            timeout = min(timeout, max(0.0, (self._exit_at - now) * 1000))
        return int(timeout) + (0 if timeout == 0 else 1)

    # --- inbound ---------------------------------------------------------------------------------
    def _read_requests(self) -> None:
        router = self._router
        for _ in range(_MAX_READS_PER_TURN):
            if not router.getsockopt(_EVENTS) & _POLLIN:  # cheaper than a read that raises zmq.Again
                return
            # Copied: pyzmq's zero-copy frames cost more than copying a small message, and libzmq
            # already drops a peer whose message exceeds 2 x max_frame_bytes (MAXMSGSIZE).
            self._take(*self._recv(zmq.NOBLOCK))

    def _read_one(self, timeout_ms: int) -> bool:
        """Block up to ``timeout_ms`` for one message and handle it; False when none came."""
        if timeout_ms != self._rcvtimeo:
            self._router.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._rcvtimeo = timeout_ms
        try:
            parts, admin = self._recv(0)
        except zmq.Again:
            return False
        self._take(parts, admin)
        return True

    def _recv(self, flags: int) -> tuple[list[bytes], bool]:
        """One message's frames, and whether an admin key sent it (with --curve-admin: ZAP's User-Id is the
        client's public key). The body is read as a frame, to see the fd it came in on (which connection sent
        it); read apart, the two frames cost less than recv_multipart's copies (bench: transport)."""
        router = self._router
        client = router.recv(flags)  # a ROUTER's first frame, the client's identity, always has one after it
        body = router.recv(flags, copy=False)
        if self._connections.tracking:
            self._connections.heard(client, body.get(_SRCFD))
        parts = [client, body.bytes]
        while body.more:  # more than one body frame: refused in _take
            body = router.recv(flags, copy=False)
            parts.append(body.bytes)
        return parts, self._admins is not None and body.get("User-Id") in self._admins

    def _take(self, parts: list[bytes], admin: bool = False) -> None:
        if len(parts) != 2:  # a DEALER sends exactly one body frame
            self._bad_frames += 1
            if len(parts) >= 2:
                self._send(parts[0], P.error(None, BadRequest("a message must be exactly one frame")))
            return
        self._handle(parts[0], parts[1], admin)

    def _handle(self, client: bytes, frame: bytes | memoryview, admin: bool = False) -> None:
        received = time.monotonic()
        rid = None
        try:
            if not self._token.reads(client, len(frame)):
                raise Unauthorized("send hello with the sidecar's token first")
            message = P.decode_frame(frame, self.limits)
            rid = P.request_id(message)
            req = P.typed_request(message, client, received)
        except NpcaiError as err:
            self._bad_frames += 1
            self._send(client, P.error(rid if rid is not None else P.salvage_id(frame), err))
            return
        stats = self._stats[req.op]
        stats.count += 1
        try:
            if req.op != "hello":
                self._token.check(client)
            if self._admins is not None and req.op in _ADMIN_OPS and not admin:
                raise Unauthorized(f"only an admin key (--curve-admin) may send {req.op}: it acts on the whole sidecar")
            if self._last_heard is not None and req.op != "hello":
                self._last_heard = received  # an authorized client renews the lease with any request
            req.check(self.limits)  # parse_request's second half: every rule that needs no model
            key = (client, req.id)
            if key in self._inflight:  # an immediate op too: its ok would be a second ending for that id
                raise BadRequest(f"request id {req.id} is already in flight on this connection")
            if req.immediate:
                self._immediate[type(req)](req)
                stats.latency_ms.append((time.monotonic() - received) * 1e3)
                return
            if self._per_client[client] >= self.limits.max_inflight_per_client:
                raise Overloaded(f"more than max_inflight_per_client={self.limits.max_inflight_per_client} requests")
            if len(self._inflight) >= self.limits.max_queue:
                raise Overloaded(f"sidecar holds max_queue={self.limits.max_queue} requests")
        except NpcaiError as err:
            stats.errors += 1
            self._send(client, P.error(req.id, err))
            return
        entry = self._inflight[key] = _Inflight(req)
        self._per_client[client] += 1
        if req.deadline is not None:
            heapq.heappush(self._deadlines, (req.deadline, next(self._tiebreak), key, entry))
        self._route.submit(req)

    # --- immediate ops: one handler per request type (see __init__'s table) ----------------------
    def _on_hello(self, req: P.HelloRequest) -> None:
        client = req.client
        self._token.hello(client, req.token)
        self._last_heard = req.received
        self.engine.role_info.update(req.role_info or {})  # read by chains' route steps
        budget = self.engine.governor.budget
        if self._hello is None or self._hello[0] is not budget:  # all but the budget is fixed for life
            self._hello = (budget, P.fixed_reply(
                P.OK, protocol=P.VERSION, server=f"npcai {__version__}", models=self.engine.roles(),
                limits=self.limits.to_wire(), pid=os.getpid(), threads=self.settings.compute_threads,
                lease_ms=self.settings.lease_ms, compute={**self.polite, "threads": self.settings.compute_threads},
                budget=dataclasses.asdict(budget)))
        self._send_frame(client, self._hello[1](req.id))

    def _on_ping(self, req: P.PingRequest) -> None:
        self._send(req.client, P.ok(req.id))

    def _on_cancel(self, req: P.CancelRequest) -> None:
        key = (req.client, req.target)
        found = key in self._inflight
        if found:
            self.engine.cancel(self._inflight[key].req)
        self._send(req.client, P.ok(req.id, target=req.target, found=found))

    def _on_stats(self, req: P.StatsRequest) -> None:
        self._send(req.client, P.ok(req.id, uptime_s=round(time.monotonic() - self._started, 3),
                                    in_flight=len(self._inflight), clients=len(self._per_client),
                                    bad_frames=self._bad_frames, dropped_replies=self._dropped_replies,
                                    ops={op: s.to_wire() for op, s in self._stats.items()},
                                    engine=self.engine.stats()))

    def _on_shutdown(self, req: P.ShutdownRequest) -> None:
        self._send(req.client, P.ok(req.id))
        self.stop()

    def _on_budget(self, req: P.BudgetRequest) -> None:
        governor = self.engine.governor
        budget = governor.set_budget(**req.fields)  # only the budget's own fields, those given
        self._send(req.client, P.ok(req.id, budget=dataclasses.asdict(budget),
                                    effective=governor.stats()["effective"]))

    def _on_frame(self, req: P.FrameRequest) -> None:
        self.engine.governor.report_frames(req.times)
        self._send(req.client, P.ok(req.id, backoff_level=self.engine.governor.level))

    # --- outbound --------------------------------------------------------------------------------
    def _send_replies(self) -> None:
        outbox = self._outbox.replies
        while outbox:
            req, reply = outbox.popleft()
            client = req.client
            key = (client, req.id)
            entry = self._inflight.get(key)
            if entry is None or entry.req is not req:
                continue  # already answered (deadline passed or cancelled): never send late
            event = reply["event"]
            if event in P.TERMINAL_EVENTS and req.deadline is not None and time.monotonic() > req.deadline \
                    and not isinstance(req, APPLIED_WHEN_TAKEN):  # those the engine answers were taken: they end so
                # The engine finished after the deadline, and this thread woke for its reply and the
                # deadline at once: the answer is late, so ``_expire_deadlines`` (next in the loop) sends
                # the marked fallback instead. Sent, it was a late answer (1 in 150 in some mixed runs).
                continue
            if event == P.TOKEN:
                entry.streamed.append(reply["text"])
            elif event in P.TERMINAL_EVENTS:
                self._finish(key, entry, event)
            self._send(client, reply)

    def _finish(self, key: tuple[bytes, int], entry: _Inflight, event: str) -> None:
        del self._inflight[key]
        if len(self._deadlines) > 64 + 2 * len(self._inflight):  # drop entries of requests that ended early
            self._deadlines = [d for d in self._deadlines if self._inflight.get(d[2]) is d[3]]
            heapq.heapify(self._deadlines)
        self._per_client[key[0]] -= 1
        if self._per_client[key[0]] <= 0:
            del self._per_client[key[0]]
        stats = self._stats[entry.req.op]
        stats.latency_ms.append((time.monotonic() - entry.req.received) * 1e3)
        if event == P.ERROR:
            stats.errors += 1
        elif event == P.CANCELLED:
            stats.cancelled += 1

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, key, entry = heapq.heappop(self._deadlines)
            if self._inflight.get(key) is not entry:
                continue  # ended already (its id may since have been reused)
            if not self.engine.expire(entry.req):
                continue  # it changed an NPC when the engine took it: the engine's ok ends it
            client = key[0]
            self._stats[entry.req.op].timeouts += 1
            reply = P.with_streamed(P.timed_out(entry.req, (now - entry.req.received) * 1e3), entry.req, entry.streamed)
            self._finish(key, entry, P.DONE)
            self._send(client, reply)

    def _forget_gone_clients(self) -> None:
        """A client that left gets nothing more: drop its open requests and its state."""
        if not self._gone:
            return
        gone, self._gone = self._gone, set()
        for key in [k for k in self._inflight if k[0] in gone]:
            self.engine.cancel(self._inflight[key].req, expired=True)
            self._finish(key, self._inflight[key], P.CANCELLED)
        for client in gone:
            self._token.forget(client)
            self._connections.forget(client)

    def _send(self, client: bytes, reply: dict[str, Any]) -> None:
        self._send_frame(client, P.encode(reply))

    def _send_frame(self, client: bytes, frame: bytes) -> None:
        try:
            self._router.send_multipart([client, frame], zmq.NOBLOCK)
        except zmq.Again:  # this client reads too slowly: its queue is full
            self._dropped_replies += 1
            now = time.monotonic()
            if now >= self._next_drop_warning:
                self._next_drop_warning = now + _WARN_EVERY_S
                log.warning("a client's send queue is full; dropped replies (%d so far)", self._dropped_replies)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._gone.add(client)
            else:
                log.warning("could not send a reply: %s", exc)
