"""Whether the process that launched the sidecar still runs (``--parent-pid``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def alive(pid: int) -> bool:
    """True while process ``pid`` runs (a process we may not signal runs too)."""
    if sys.platform == "win32":  # pragma: no cover - exercised by the Windows build only
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited but was not reaped yet (Linux): kill(pid, 0) still succeeds on it, and a
    game whose launcher does not reap it stays one for as long as the launcher runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False  # no /proc (macOS), or it went away meanwhile: kill(pid, 0) has answered
    return stat.rsplit(b")", 1)[-1].split()[:1] in ([b"Z"], [b"X"])  # the state follows the command's name
