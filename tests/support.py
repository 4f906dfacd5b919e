"""Helpers several test files share: running the CLI, judging its failures, reading a process's memory,
finding the shared public data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository root


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npcai", *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_failure(proc: subprocess.CompletedProcess, needle: str) -> None:
    """The CLI failed as users are promised: exit 2 and one `npcai: ...` line, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("npcai: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def shared_data(name: str) -> Path:
    """A folder of the public data sets read in place, never copied into the project (``schemas``,
    ``quality``): under ``$NPCAI_DATA`` when it is set, else under ``../shared/data`` beside the
    checkout. The calling test is skipped, naming the folder, when it is absent."""
    base = Path(os.environ["NPCAI_DATA"]) if os.environ.get("NPCAI_DATA") else ROOT.parent / "shared" / "data"
    folder = base / name
    if not folder.is_dir():
        pytest.skip(f"no data folder {folder} (set NPCAI_DATA to a folder holding {name}/)")
    return folder


def options_scored_alone(model, stem: list[int], options: list[list[int]], adapter=None):
    """Each option's log-likelihood after ``stem``, the stem and the option alone in a plain sequence, as
    lm-evaluation-harness scores them; with ``adapter`` (a llama.cpp LoRA handle) applied at run time."""
    import ctypes

    import llama_cpp as L
    import numpy as np

    from npcai.model.choices import first_tokens, log_softmax_at
    from npcai.model.native import Batch, Context

    ctx = Context(model, n_ctx=1024, n_batch=512, n_seq=1, threads=2)
    if adapter is not None:
        assert L.llama_set_adapters_lora(ctx.handle, (L.llama_adapter_lora_p_ctypes * 1)(adapter), 1,
                                         (ctypes.c_float * 1)(1.0)) == 0
    b = Batch(512)
    out = []
    try:
        for opt in options:
            ctx.seq_rm(0)
            b.clear()
            rows = [b.add(t, i, 0, True) for i, t in enumerate(stem + opt[:-1])]
            assert ctx.decode(b) == 0
            score = first_tokens(ctx.logits(rows[len(stem) - 1], model.n_vocab), [opt])[0]
            for j, tok in enumerate(opt[1:]):
                score += log_softmax_at(ctx.logits(rows[len(stem) + j], model.n_vocab), [tok])[0]
            out.append(score)
    finally:
        b.close()
        ctx.close()
    return np.array(out)
