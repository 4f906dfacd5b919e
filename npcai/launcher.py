"""Start a sidecar as a child process and learn where it listens.

The child prints ``NPCAI READY <endpoint>`` as its first stdout line once the
models are loaded and the socket is bound (docs/PROTOCOL.md, "Launching"); the
engine bridges follow the same steps in their own languages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import deque
from typing import Any

from npcai.errors import ModelError
from npcai.protocol import READY_PREFIX, TOKEN_ENV


class Sidecar:
    """A running ``npcai serve`` child, stopped on ``close()`` (or when this process dies).

    ``args`` are ``npcai serve`` flags. ``program`` is the command standing for ``npcai serve``: a bundled
    sidecar's executable (``npcai bundle``), for instance; by default this Python's ``-m npcai serve``. ``env``
    adds to this process's environment, or with ``inherit_env=False`` is the child's whole environment. A
    ``--token T`` among ``args`` reaches the child as ``$NPCAI_TOKEN``, never on its command line, which any user
    of the machine can read. ``token`` holds the secret clients must send (``--token``, ``$NPCAI_TOKEN`` in the
    child's environment, or read back from ``--connection-file``).
    After a crash, ``restart()`` starts a fresh sidecar with the same flags.
    """

    def __init__(self, *args: str, timeout: float = 300.0, env: dict[str, str] | None = None,
                 program: list[str] | None = None, inherit_env: bool = True):
        token = _flag(args, "--token")
        self.args = _without_flag(args, "--token")
        self._timeout = timeout
        self._env = {**(os.environ if inherit_env else {}), **(env or {})}
        if token is not None:
            self._env[TOKEN_ENV] = token
        self._program = program or [sys.executable, "-m", "npcai", "serve"]
        self.token: str | None = self._env.get(TOKEN_ENV) or None
        self._start()

    def _start(self) -> None:
        cmd = [*self._program, "--parent-pid", str(os.getpid()), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env)
        self.stderr_tail: deque[str] = deque(maxlen=50)
        self._stderr_reader = threading.Thread(target=self._drain_stderr, args=(self.proc, self.stderr_tail),
                                               daemon=True)
        self._stderr_reader.start()
        self.endpoint = self._wait_ready(self._timeout)
        connection_file = _flag(self.args, "--connection-file")
        if connection_file:
            with open(connection_file) as f:
                self.token = json.load(f)["token"]

    @staticmethod
    def _drain_stderr(proc: subprocess.Popen, tail: deque[str]) -> None:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                tail.append(line.rstrip())
        except (ValueError, OSError):  # closed by close() while reading
            pass

    def _wait_ready(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        found: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                if line.startswith(READY_PREFIX):
                    found.append(line[len(READY_PREFIX):].strip())
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            code = None
            if not reader.is_alive():  # its output ended: it stopped, or is stopping, before it was ready
                try:
                    code = self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            if code is not None:  # say why, as its own last words
                self._stderr_reader.join(2.0)
                self.close()
                said = [ln for ln in self.stderr_tail if ln.strip()]
                why = said[-1].removeprefix("npcai: ") if said else "no output"
                raise ModelError(f"the sidecar stopped before it was ready (exit code {code}): {why}")
            self.close()
            detail = "\n".join(self.stderr_tail) or "no output"
            raise ModelError(f"sidecar did not become ready within {timeout:.0f} s:\n{detail}")
        return found[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def client(self, **kw: Any):
        """A Client for this sidecar that knows its token and notices at once when its process dies."""
        from npcai.client import Client

        return Client(self.endpoint, token=self.token, sidecar=self, **kw)

    def restart(self) -> str:
        """Stop this sidecar if it still runs and start a fresh one with the same flags; returns its endpoint.

        The new sidecar knows no NPCs: restore them with ``load`` from states saved earlier. Make clients again
        after a restart: with the default ``--endpoint`` (port 0) the new sidecar listens on a new port, and
        clients made before (``client()`` or ``Client(sidecar.endpoint)``) stay on the old one, ending every
        call ``unavailable``. Only with a fixed ``--endpoint`` (and, with ``--connection-file``, a fixed
        ``--token`` or ``$NPCAI_TOKEN``: else the new sidecar makes a new one) do they reconnect and say hello
        again by themselves.
        """
        self.close()
        self._start()
        return self.endpoint

    def kill(self) -> None:
        """Kill it hard (tests of crash handling)."""
        self.proc.kill()
        self.proc.wait()

    def close(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return self.proc.returncode

    def __enter__(self) -> "Sidecar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _flag(args: tuple[str, ...], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` among args, the last one winning."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def _without_flag(args: tuple[str, ...], name: str) -> tuple[str, ...]:
    """``args`` without any ``--name VALUE`` or ``--name=VALUE``."""
    kept: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == name and i + 1 < len(args):
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return tuple(kept)
