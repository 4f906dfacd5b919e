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
