"""Whether the process that launched the sidecar still runs (``--parent-pid``)."""

from __future__ import annotations

import os
import sys


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
        return True
    return True
