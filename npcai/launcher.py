"""Start a sidecar as a child process and learn where it listens.

The child prints ``NPCAI READY <endpoint>`` as its first stdout line once the
models are loaded and the socket is bound (docs/PROTOCOL.md, "Launching"); the
engine bridges follow the same steps in their own languages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque

from .errors import ModelError
from .server import READY_PREFIX


class Sidecar:
    """A running ``npcai serve`` child, stopped on ``close()`` (or when this process dies)."""

    def __init__(self, *args: str, timeout: float = 300.0, env: dict[str, str] | None = None):
        cmd = [sys.executable, "-m", "npcai", "serve", "--parent-pid", str(os.getpid()), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.stderr_tail: deque[str] = deque(maxlen=50)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.endpoint = self._wait_ready(timeout)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip())

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
            self.close()
            detail = "\n".join(self.stderr_tail) or "no output"
            raise ModelError(f"sidecar did not become ready within {timeout:.0f} s:\n{detail}")
        return found[0]

    def alive(self) -> bool:
        return self.proc.poll() is None

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
