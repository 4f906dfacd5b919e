"""llama-cpp-python's own OpenAI-compatible server as a child process: the real engine the tests
and ``npcai bench --only remote`` run remote roles against (``python -m llama_cpp.server``, the
[server] extra of the llama-cpp-python npcai itself uses)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from npcai.errors import NpcaiError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server --model PATH --host 127.0.0.1 --port P``, stopped on ``stop()``."""

    def __init__(self, model: Path, *, port: int = 0, threads: int = 0, extra: tuple[str, ...] = (),
                 timeout: float = 120.0, log: Path | None = None):
        """``threads`` bounds both its generation and its prompt threads (llama-cpp-python's server
        would take every core for prompts); ``log``: a file for its verbose output, which reports
        the prefix it reused for each prompt ("Llama.generate: N prefix-match hit")."""
        self.model, self.port, self.extra, self.timeout, self.log = model, port or free_port(), extra, timeout, log
        self.threads = threads or max(1, (os.cpu_count() or 2) - 1)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LlamaServer":
        out = open(self.log, "ab") if self.log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1",
                 "--port", str(self.port), "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads),
                 *self.extra], stdout=out, stderr=subprocess.STDOUT if self.log is not None else subprocess.DEVNULL)
        finally:
            if self.log is not None:
                out.close()  # the child holds its own copy
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise NpcaiError(f"llama_cpp.server exited with code {self.proc.returncode} "
                                 "(is the [server] extra of llama-cpp-python installed?)")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise NpcaiError(f"llama_cpp.server did not answer within {self.timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as a crashed or unplugged engine goes: no goodbye to its clients
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
