"""A small Python client for the sidecar: blocking calls, or a per-frame ``poll()``.

Usable from tests, the demo and benchmarks, and from Python games (pygame, Ren'Py):
``request()`` never blocks and returns a Handle; call ``poll()`` once per frame to
dispatch replies (their callbacks bounded in count and microseconds), or ``wait()`` on a handle.

Every request ends, whatever happens to the sidecar (docs/RELIABILITY.md):

- a request sent with ``deadline_ms`` ends by its deadline: if no answer came, the client
  makes up the sidecar's own timed-out reply (``done`` with the fallback, marked
  ``local: true``) and drops the sidecar's later replies to it;
- when the sidecar goes away (its connection drops, a libzmq heartbeat goes unanswered,
  or the ``Sidecar`` handle given says it died), every open request ends at once: with
  its fallback if it has a deadline, otherwise with an ``error`` of code ``unavailable``.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import msgpack
import zmq
from zmq.utils.monitor import parse_monitor_message

from npcai.errors import NpcaiError
from npcai.protocol import is_ipv6_endpoint

if TYPE_CHECKING:
    from npcai.launcher import Sidecar

TERMINAL = frozenset({"ok", "done", "error", "cancelled"})

_PEER_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_SIDECAR_CHECK_S = 0.05  # how often a Sidecar handle is asked whether its process is alive
_LATE_IDS = 4096  # ids ended locally whose late replies are still dropped


class RequestFailed(NpcaiError):
    """The sidecar answered a request with an error event (or the client ended it: ``unavailable``)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class SidecarTimeout(NpcaiError):
    code = "timeout"


@dataclass
class Handle:
    """One request in flight. Callbacks run inside ``poll()``/``wait()``, on the caller's thread."""

    id: int
    op: str
    chunks: list[str] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)  # a say's sentence events, in order
    steps: list[dict[str, Any]] = field(default_factory=list)  # a chain's step events, in order
    reply: dict[str, Any] | None = None
    on_token: Callable[[str], None] | None = None
    on_done: Callable[[dict[str, Any]], None] | None = None
    on_sentence: Callable[[str], None] | None = None
    on_step: Callable[[dict[str, Any]], None] | None = None
    deadline: float | None = None  # time.monotonic() by which it ends, when sent with deadline_ms
    fallback: Any = None
    sent_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.reply is not None

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def _record(self, msg: dict[str, Any]) -> bool:
        """Keep what ``msg`` says (an ending sets ``reply``); True when its callback is due."""
        event = msg.get("event")
        if event == "token":
            self.chunks.append(msg["text"])
        elif event == "sentence":
            self.sentences.append(msg["text"])
        elif event == "step":
            self.steps.append(msg)
        elif event in TERMINAL:
            self.reply = msg
        else:
            return False  # an event this client does not know yet: a newer sidecar's, never an ending
        return True

    def _notify(self, msg: dict[str, Any]) -> None:
        """Run the game's callback for a recorded ``msg``: last, so that its exception leaves the client whole."""
        event = msg.get("event")
        if event == "token":
            if self.on_token:
                self.on_token(msg["text"])
        elif event == "sentence":
            if self.on_sentence:
                self.on_sentence(msg["text"])
        elif event == "step":
            if self.on_step:
                self.on_step(msg)
        elif self.on_done:
            self.on_done(msg)


class Client:
    """A DEALER connection to one sidecar.

    ``token``: the sidecar's shared secret, sent in ``hello``. ``sidecar``: a launcher handle
    whose process death ends open requests at once. ``curve_server_key`` (Z85 public key, or a
    certificate file) with ``curve_client_cert`` (a secret certificate file, or a (public, secret)
    pair) connect with CurveZMQ. ``heartbeat_ms``: libzmq heartbeat interval (0 = off); a sidecar
    silent for three intervals counts as gone. After ``close()``, every call raises ``RequestFailed``
    (``unavailable``: the client is closed).
    """

    def __init__(self, endpoint: str, *, token: str | None = None, context: zmq.Context | None = None,
                 sidecar: "Sidecar | None" = None, curve_server_key: bytes | str | Path | None = None,
                 curve_client_cert: str | Path | tuple[bytes, bytes] | None = None, heartbeat_ms: int = 1000):
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if heartbeat_ms > 0:
            self._sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
            self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * heartbeat_ms)
        if curve_server_key is not None:
            _set_curve(self._sock, curve_server_key, curve_client_cert)
        if is_ipv6_endpoint(endpoint):
            self._sock.setsockopt(zmq.IPV6, 1)
        self._monitor = self._sock.get_monitor_socket(_PEER_EVENTS)
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise NpcaiError(f"bad endpoint {endpoint!r}: {zmq.strerror(exc.errno)} (expected tcp://HOST:PORT or "
                             "ipc://PATH)") from None
        self.endpoint = endpoint
        self.token = token
        self.sidecar = sidecar
        self.state = "connecting"  # then "ready"; "lost" when the sidecar went away, "refused" by Curve
        self.lease_ms = 0  # from hello: while set, poll() and wait() ping often enough to hold the lease
        self._ids = itertools.count(1)
        self._pending: dict[int, Handle] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap of (deadline, id)
        self._ended_locally: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._heartbeats: set[int] = set()  # ids of the client's own requests
        self._hellos: dict[int, dict[str, Any]] = {}  # open hello requests: their fields
        self._hello: dict[str, Any] | None = None  # the fields of the last successful hello
        self._last_sent = 0.0
        self._next_sidecar_check = 0.0
        self.stray: list[dict[str, Any]] = []  # replies for no known request (e.g. errors with id nil)
        # recorded replies whose callbacks have not run yet (endings made up here, a lost sidecar's last replies):
        # poll() runs them first, within its bounds
        self._notices: collections.deque[tuple[Handle, dict[str, Any]]] = collections.deque()

    # --- non-blocking --------------------------------------------------------------------------
    def request(self, op: str, **fields: Any) -> Handle:
        """Send a request; fields set to None are left out. Never blocks."""
        sock = self._open()
        rid = next(self._ids)
        msg = {"v": 1, "id": rid, "op": op, **{k: v for k, v in fields.items() if v is not None}}
        frame = msgpack.packb(msg, use_bin_type=True)  # first: a value msgpack cannot encode raises, recording nothing
        handle = Handle(rid, op, fallback=fields.get("fallback"), sent_at=time.monotonic())
        if op == "hello":
            self._hellos[rid] = {k: v for k, v in msg.items() if k in ("client", "token")}
        deadline_ms = msg.get("deadline_ms")
        if isinstance(deadline_ms, (int, float)) and not isinstance(deadline_ms, bool) and deadline_ms >= 0:
            handle.deadline = handle.sent_at + deadline_ms / 1000.0
        self._pending[rid] = handle
        self._check_peer()
        if not self.alive():
            self._end_locally(handle, self._gone_reason())
            return handle
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:  # the sidecar has not read what we sent so far
            self._end_locally(handle, "the sidecar is not reading: this client's send queue is full")
            return handle
        self._last_sent = handle.sent_at
        if handle.deadline is not None:
            heapq.heappush(self._deadlines, (handle.deadline, rid))
        return handle

    def send_raw(self, frame: bytes | list[bytes]) -> None:
        """Send bytes as they are (for tests of bad input)."""
        if isinstance(frame, list):
            self._open().send_multipart(frame)
        else:
            self._open().send(frame)

    def poll(self, max_messages: int = 64, budget_us: int = 2000) -> int:
        """Dispatch waiting replies, end requests whose deadline passed, notice a sidecar gone; never blocks.

        Requests end at once (``finished``, ``reply``) when their deadline passes or the sidecar goes: that
        bookkeeping is not bounded (about 2 µs a request). The callbacks are: those of at most ``max_messages``
        replies run per call, stopping once ``budget_us`` is spent, the sidecar's replies and the client's
        made-up endings alike, in order; the rest run on the next calls.
        An exception from a callback reaches the caller; the client stays whole and goes on at the next call.
        Returns how many replies were handled.
        """
        start = time.perf_counter()
        sock = self._open()
        self._check_peer()
        n = 0
        try:
            n = self._pump(sock, n, max_messages, start + budget_us / 1e6)
        finally:
            self._expire_deadlines()  # records only: a game's raising callback does not hold deadlines back
            self._heartbeat()
        return self._pump(None, n, max_messages, start + budget_us / 1e6)

    def _pump(self, sock: zmq.Socket | None, n: int, max_messages: int, until: float) -> int:
        """Run waiting callbacks, then (given ``sock``) dispatch replies, until a bound; returns the count."""
        while n < max_messages:
            if self._notices:
                handle, msg = self._notices.popleft()
                n += 1
                handle._notify(msg)
            elif sock is None:
                break
            else:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                n += 1
                self._dispatch(frame)
            if time.perf_counter() >= until:
                break
        return n

    def wait_for_reply(self, timeout: float) -> bool:
        """Sleep until a reply is waiting (True) or ``timeout`` seconds pass (False); then ``poll()``.

        For a loop that has nothing else to do: it costs no CPU while it waits.
        """
        return bool(self._open().poll(max(0, int(timeout * 1000))))

    def _open(self) -> zmq.Socket:
        """The socket, while the client is open: after close(), libzmq would only say 'not a socket'."""
        if self._sock.closed:
            raise RequestFailed("unavailable", "the client is closed")
        return self._sock

    def alive(self) -> bool:
        """False once the sidecar is known to be gone (until a connection to it succeeds again)."""
        return self.state in ("connecting", "ready")

    def _dispatch(self, frame: bytes, defer: bool = False) -> None:
        try:
            msg = msgpack.unpackb(frame, raw=False)
        except Exception:  # not from a sidecar that keeps the protocol: keep it for inspection
            self.stray.append({"event": "error", "code": "bad_reply", "raw": frame})
            return
        rid = msg.get("id") if isinstance(msg, dict) else None
        rid = rid if isinstance(rid, int) else None
        handle = self._pending.get(rid)
        if handle is None:
            if rid in self._heartbeats:
                self._heartbeats.discard(rid)
            elif rid in self._ended_locally:
                if msg.get("event") in TERMINAL:
                    del self._ended_locally[rid]
            else:
                self.stray.append(msg)
            return
        if not handle._record(msg):
            return
        if handle.finished:  # off the books before the game's callback runs: it may raise
            del self._pending[handle.id]
            hello = self._hellos.pop(handle.id, None)
            if hello is not None and msg.get("event") == "ok":
                self.lease_ms = int(msg.get("lease_ms") or 0)
                self._hello = hello
        if defer or self._notices:  # after the callbacks still waiting
            self._notices.append((handle, msg))
        else:
            handle._notify(msg)

    # --- ending requests without the sidecar -------------------------------------------------------
    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            handle = self._pending.get(rid)
            if handle is not None:
                self._end_locally(handle, None)

    def _end_locally(self, handle: Handle, gone: str | None) -> None:
        """End a request the sidecar did not: by its deadline (``gone`` None) or because the sidecar is gone."""
        self._pending.pop(handle.id, None)
        self._hellos.pop(handle.id, None)
        self._ended_locally[handle.id] = None
        while len(self._ended_locally) > _LATE_IDS:
            self._ended_locally.popitem(last=False)
        elapsed = round((time.monotonic() - handle.sent_at) * 1e3, 3)
        if gone is not None and handle.deadline is None:
            code = "unauthorized" if self.state == "refused" else "unavailable"
            msg = {"v": 1, "id": handle.id, "event": "error", "code": code, "message": gone, "local": True}
        else:
            msg = {"v": 1, "id": handle.id, "event": "done", "value": handle.fallback,
                   "text": handle.text if handle.op == "say" else "", "tokens": len(handle.chunks),
                   "finish_reason": "deadline" if gone is None else "unavailable",
                   "timed_out": gone is None, "used_fallback": True,
                   "timing": {"queue_ms": elapsed, "total_ms": elapsed}, "local": True}
        handle._record(msg)  # ended now; its callback runs from poll(), within its bounds
        self._notices.append((handle, msg))

    def _check_peer(self) -> None:
        """Notice a sidecar gone: connection events, and the launcher handle's process when given."""
        while True:
            try:
                kind = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))["event"]
            except zmq.ZMQError:  # zmq.Again: no event waiting
                break
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self.state == "lost" and self._hello is not None:
                    self._send_internal({"op": "hello", **self._hello})  # a new connection: say hello again
                self.state = "ready"
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._lose("refused")
            elif self.state != "refused":
                self._lose("lost")
        if self.sidecar is not None and self.alive():
            now = time.monotonic()
            if now >= self._next_sidecar_check:
                self._next_sidecar_check = now + _SIDECAR_CHECK_S
                if not self.sidecar.alive():
                    self._lose("lost")

    def _lose(self, state: str) -> None:
        # Replies the sidecar sent before its connection went (a stopping sidecar's "cancelled") are its answers:
        # read them before ending what is still open locally.
        while True:
            try:
                self._dispatch(self._sock.recv(zmq.NOBLOCK), defer=True)
            except zmq.Again:
                break
        self.state = state
        reason = self._gone_reason()
        for handle in list(self._pending.values()):
            self._end_locally(handle, reason)
        self._deadlines.clear()
        self._heartbeats.clear()

    def _gone_reason(self) -> str:
        if self.state == "refused":
            return "the sidecar refused this client's Curve key"
        if self.sidecar is not None and not self.sidecar.alive():
            return f"the sidecar process exited (code {self.sidecar.proc.returncode})"
        return "the connection to the sidecar was lost"

    def _heartbeat(self) -> None:
        """Hold the sidecar's lease (hello's lease_ms): make sure it hears from us a few times per lease."""
        if self.lease_ms and self.state == "ready" and time.monotonic() - self._last_sent >= self.lease_ms / 4000:
            self._send_internal({"op": "ping"})

    def _send_internal(self, msg: dict[str, Any]) -> None:
        """A request of the client's own (heartbeat, hello again); its reply is dropped."""
        rid = next(self._ids)
        try:
            self._sock.send(msgpack.packb({"v": 1, "id": rid, **msg}, use_bin_type=True), zmq.NOBLOCK)
        except zmq.Again:
            return
        self._heartbeats.add(rid)
        self._last_sent = time.monotonic()

    # --- blocking ---------------------------------------------------------------------------------
    def wait(self, handle: Handle, timeout: float = 60.0) -> dict[str, Any]:
        """Block until ``handle`` ends (by its deadline at the latest); returns its last reply.

        Raises SidecarTimeout after ``timeout`` seconds without an end.
        """
        give_up = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            self.poll(max_messages=1024, budget_us=1_000_000)
            if handle.finished:
                self._notify_through(handle)
                return handle.reply  # type: ignore[return-value]
            now = time.monotonic()
            if now >= give_up:
                raise SidecarTimeout(f"no answer to {handle.op} #{handle.id} within {timeout:.1f} s")
            wake = give_up
            if self._deadlines:
                wake = min(wake, self._deadlines[0][0])
            if self.sidecar is not None:
                wake = min(wake, self._next_sidecar_check)
            if self.lease_ms and self.state == "ready":
                wake = min(wake, self._last_sent + self.lease_ms / 4000)
            poller.poll(max(0, int((wake - now) * 1000)) + 1)

    def _notify_through(self, handle: Handle) -> None:
        """Run the waiting callbacks, in order, up to ``handle``'s last: wait() returns after its callbacks ran."""
        last = max((i for i, (h, _) in enumerate(self._notices) if h is handle), default=-1)
        for _ in range(last + 1):
            h, msg = self._notices.popleft()
            h._notify(msg)

    def call(self, op: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        """Send and wait; raises RequestFailed if the request ends with an error."""
        reply = self.wait(self.request(op, **fields), timeout)
        if reply["event"] == "error":
            raise RequestFailed(reply.get("code", "?"), reply.get("message", ""))
        return reply

    def hello(self, client: str = "npcai.client") -> dict[str, Any]:
        return self.call("hello", client=client, token=self.token)

    def npc(self, npc: str, persona: str, **kw: Any) -> dict[str, Any]:
        return self.call("npc", npc=npc, persona=persona, **kw)

    def say(self, npc: str, text: str, on_token: Callable[[str], None] | None = None, timeout: float = 60.0,
            on_sentence: Callable[[str], None] | None = None, **kw: Any) -> dict[str, Any]:
        """A line; ``actions=True`` (or a list of action names) lets the NPC act after it (``done['action']``)."""
        handle = self.request("say", npc=npc, text=text, **kw)
        handle.on_token, handle.on_sentence = on_token, on_sentence
        reply = self.wait(handle, timeout)
        if reply["event"] == "error":
            raise RequestFailed(reply.get("code", "?"), reply.get("message", ""))
        return reply

    def decide(self, situation: str, timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        return self.call("decide", timeout=timeout, situation=situation, **kw)

    def act_result(self, npc: str, name: str, result: str, timeout: float = 60.0) -> dict[str, Any]:
        """Tell an NPC what came of one of its actions; it joins the NPC's history."""
        return self.call("act_result", timeout=timeout, npc=npc, name=name, result=result)

    def chain(self, steps: list[dict[str, Any]], timeout: float = 60.0,
              on_step: Callable[[dict[str, Any]], None] | None = None, **kw: Any) -> dict[str, Any]:
        """Run steps (decide/say/observe/route maps with ``op`` and ``as``) in one request; ``done['results']``
        maps each ``as`` to its value. ``on_step`` hears each step as it finishes."""
        handle = self.request("chain", steps=steps, **kw)
        handle.on_step = on_step
        reply = self.wait(handle, timeout)
        if reply["event"] == "error":
            raise RequestFailed(reply.get("code", "?"), reply.get("message", ""))
        return reply

    def close(self) -> None:
        if self._sock.closed:
            return
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _set_curve(sock: zmq.Socket, server_key: bytes | str | Path,
               client_cert: str | Path | tuple[bytes, bytes] | None) -> None:
    import zmq.auth

    if isinstance(server_key, Path) or (isinstance(server_key, str) and len(server_key) != 40):
        server_key = zmq.auth.load_certificate(server_key)[0]
    if client_cert is None:
        public, secret = zmq.curve_keypair()  # only a sidecar that allows any key lets this in
    elif isinstance(client_cert, tuple):
        public, secret = client_cert
    else:
        public, secret = zmq.auth.load_certificate(client_cert)
        if not secret:
            raise NpcaiError(f"{client_cert}: a public certificate; the client needs its .key_secret file")
    sock.curve_serverkey = server_key.encode() if isinstance(server_key, str) else server_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret
