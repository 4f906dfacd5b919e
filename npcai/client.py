"""A small Python client for the sidecar: blocking calls, or a per-frame ``poll()``.

Usable from tests, the demo and benchmarks, and from Python games (pygame, Ren'Py):
``request()`` never blocks and returns a Handle; call ``poll()`` once per frame to
dispatch replies (bounded in messages and microseconds), or ``wait()`` on a handle.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import zmq

from .errors import NpcaiError

TERMINAL = frozenset({"ok", "done", "error", "cancelled"})


class RequestFailed(NpcaiError):
    """The sidecar answered a request with an error event."""

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
    reply: dict[str, Any] | None = None
    on_token: Callable[[str], None] | None = None
    on_done: Callable[[dict[str, Any]], None] | None = None

    @property
    def finished(self) -> bool:
        return self.reply is not None

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def _deliver(self, msg: dict[str, Any]) -> None:
        if msg.get("event") == "token":
            self.chunks.append(msg["text"])
            if self.on_token:
                self.on_token(msg["text"])
            return
        self.reply = msg
        if self.on_done:
            self.on_done(msg)


class Client:
    def __init__(self, endpoint: str, *, token: str | None = None, context: zmq.Context | None = None):
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self.endpoint = endpoint
        self.token = token
        self._ids = itertools.count(1)
        self._pending: dict[int, Handle] = {}
        self.stray: list[dict[str, Any]] = []  # replies for no known request (e.g. errors with id nil)

    # --- non-blocking --------------------------------------------------------------------------
    def request(self, op: str, **fields: Any) -> Handle:
        """Send a request; fields set to None are left out."""
        rid = next(self._ids)
        msg = {"v": 1, "id": rid, "op": op, **{k: v for k, v in fields.items() if v is not None}}
        handle = Handle(rid, op)
        self._pending[rid] = handle
        self._sock.send(msgpack.packb(msg, use_bin_type=True))
        return handle

    def send_raw(self, frame: bytes | list[bytes]) -> None:
        """Send bytes as they are (for tests of bad input)."""
        if isinstance(frame, list):
            self._sock.send_multipart(frame)
        else:
            self._sock.send(frame)

    def poll(self, max_messages: int = 64, budget_us: int = 2000) -> int:
        """Dispatch waiting replies without blocking; returns how many were handled."""
        start = time.perf_counter()
        n = 0
        while n < max_messages:
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._dispatch(frame)
            n += 1
            if (time.perf_counter() - start) * 1e6 >= budget_us:
                break
        return n

    def _dispatch(self, frame: bytes) -> None:
        msg = msgpack.unpackb(frame, raw=False)
        handle = self._pending.get(msg.get("id")) if isinstance(msg, dict) else None
        if handle is None:
            self.stray.append(msg)
            return
        handle._deliver(msg)
        if handle.finished:
            del self._pending[handle.id]

    # --- blocking ---------------------------------------------------------------------------------
    def wait(self, handle: Handle, timeout: float = 60.0) -> dict[str, Any]:
        """Block until ``handle`` ends; returns its last reply (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while not handle.finished:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
                if not handle.finished and time.monotonic() >= deadline:
                    raise SidecarTimeout(f"no answer to {handle.op} #{handle.id} within {timeout:.1f} s")
                continue
            self.poll(max_messages=1024, budget_us=1_000_000)
        return handle.reply  # type: ignore[return-value]

    def call(self, op: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        """Send and wait; raises RequestFailed if the sidecar answers with an error."""
        reply = self.wait(self.request(op, **fields), timeout)
        if reply["event"] == "error":
            raise RequestFailed(reply.get("code", "?"), reply.get("message", ""))
        return reply

    def hello(self, client: str = "npcai.client") -> dict[str, Any]:
        return self.call("hello", client=client, token=self.token)

    def npc(self, npc: str, persona: str, **kw: Any) -> dict[str, Any]:
        return self.call("npc", npc=npc, persona=persona, **kw)

    def say(self, npc: str, text: str, on_token: Callable[[str], None] | None = None, timeout: float = 60.0,
            **kw: Any) -> dict[str, Any]:
        handle = self.request("say", npc=npc, text=text, **kw)
        handle.on_token = on_token
        reply = self.wait(handle, timeout)
        if reply["event"] == "error":
            raise RequestFailed(reply.get("code", "?"), reply.get("message", ""))
        return reply

    def decide(self, situation: str, timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        return self.call("decide", timeout=timeout, situation=situation, **kw)

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
