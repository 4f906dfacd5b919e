"""The compute budget: how hard the sidecar may work right now, so the game keeps its frames.

The game sets limits (threads, a token-rate cap, a share of wall time) and may report
its frame times. When frames run over the game's target (twice within 30 frames: a lone
spike from a garbage collection or an asset load is not the sidecar's doing), the
governor backs off one level at a time (fewer threads, smaller batches, longer pauses between model steps) and
recovers a level at a time once frames have been back within target for a while.
Deadlines are unaffected: the socket thread answers late work with its fallback.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass

from npcai.errors import SettingsError

# What each back-off level does: (share of the budget's wall-time share, thread divisor, batch cap).
_LEVELS = ((1.0, 1, None), (0.6, 2, 64), (0.35, 0, 16), (0.2, 0, 8))  # divisor 0 = one thread
_MISS = 1.10  # a frame this much over target counts as missed
_MISSES_TO_ACT, _WINDOW_FRAMES = 2, 30  # back off on 2 misses within 30 frames: a lone spike (GC, a load) is not us
_RECOVER_AFTER_S = 1.0  # frames within target this long before stepping a level back
_ESCALATE_EVERY_S = 0.25  # at most one level harder per this long, so one spike is not a panic


@dataclass(frozen=True)
class Budget:
    """Limits the game sets with the `budget` op (or --budget-* flags); 0 means no limit."""

    threads: int = 0
    tokens_per_s: float = 0.0
    share: float = 1.0  # of wall time the sidecar may spend computing
    frame_ms: float = 0.0  # the game's target frame time; 0 = the game reports no frames


class Governor:
    """Decides threads, batch size and pauses for the engine; fed frame times by the socket thread."""

    def __init__(self, budget: Budget, default_threads: int, n_batch: int):
        self._lock = threading.Lock()
        self.budget = budget
        self.default_threads = default_threads
        self.n_batch = n_batch
        self.level = 0
        self.backoffs = 0
        self.recoveries = 0
        self.compute_s = 0.0
        self.paused_s = 0.0
        self._frames: collections.deque[float] = collections.deque(maxlen=120)
        self._missed: collections.deque[bool] = collections.deque(maxlen=_WINDOW_FRAMES)
        self._last_escalation = float("-inf")
        self._good_since: float | None = None
        self._ready_at = 0.0
        self._tokens_ready_at = 0.0

    # --- the game's side (socket thread) ------------------------------------------------
    def set_budget(self, **fields: float) -> Budget:
        with self._lock:
            self.budget = Budget(**{**asdict(self.budget), **fields})
            self._ready_at = self._tokens_ready_at = 0.0  # pauses owed under the old budget are forgiven
            if not self.budget.frame_ms:
                self.level, self._good_since = 0, None
            return self.budget

    def report_frames(self, frame_ms: list[float], now: float | None = None) -> None:
        """Recent frame times from the game; a missed frame raises the back-off level."""
        now = time.monotonic() if now is None else now
        with self._lock:
            target = self.budget.frame_ms
            if not target:
                return
            self._frames.extend(frame_ms)
            missed = [f > target * _MISS for f in frame_ms]
            self._missed.extend(missed)
            if any(missed):
                self._good_since = None
                if (sum(self._missed) >= _MISSES_TO_ACT and self.level < len(_LEVELS) - 1
                        and now - self._last_escalation >= _ESCALATE_EVERY_S):
                    self.level += 1
                    self.backoffs += 1
                    self._last_escalation = now
                    self._missed.clear()  # the next level needs misses of its own
            elif self.level:
                if self._good_since is None:
                    self._good_since = now
                elif now - self._good_since >= _RECOVER_AFTER_S:
                    self.level -= 1
                    self.recoveries += 1
                    self._good_since = now

    # --- the engine's side ----------------------------------------------------------------
    def threads(self) -> int:
        base = min(self.budget.threads or self.default_threads, self.default_threads)
        divisor = _LEVELS[self.level][1]
        return max(1, base // divisor) if divisor else 1

    def batch_cap(self) -> int:
        cap = _LEVELS[self.level][2]
        return self.n_batch if cap is None else min(cap, self.n_batch)

    def wait_s(self, now: float | None = None, *, deciding: bool = False) -> float:
        """How long the engine must pause before its next step (0 = go). The token-rate cap holds back
        dialogue only: a step for a pending decision (``deciding``) waits just for the wall-time share."""
        now = time.monotonic() if now is None else now
        ready = self._ready_at if deciding else max(self._ready_at, self._tokens_ready_at)
        return max(0.0, ready - now)

    def after_step(self, compute_s: float, generated: int, now: float | None = None) -> None:
        """Account a step; schedule the pause that keeps compute within the share and rate cap."""
        now = time.monotonic() if now is None else now
        self.compute_s += compute_s
        share = self.budget.share * _LEVELS[self.level][0]
        pause = compute_s * (1.0 / share - 1.0) if share < 1.0 else 0.0
        self._ready_at = now + pause
        if self.budget.tokens_per_s > 0 and generated:
            self._tokens_ready_at = max(self._tokens_ready_at, now) + generated / self.budget.tokens_per_s
        self.paused_s += max(pause, self._tokens_ready_at - now, 0.0)

    def stats(self) -> dict:
        frames = sorted(self._frames)
        return {
            "budget": asdict(self.budget),
            "effective": {"threads": self.threads(), "batch": self.batch_cap(),
                          "share": round(self.budget.share * _LEVELS[self.level][0], 3)},
            "backoff_level": self.level,
            "backoff_events": self.backoffs,
            "recoveries": self.recoveries,
            "compute_s": round(self.compute_s, 3),
            "paused_s": round(self.paused_s, 3),
            "frame_p50_ms": frames[len(frames) // 2] if frames else None,
        }


def be_polite(nice: int, cpus: list[int] | None) -> dict:
    """Lower this process's CPU priority below the game's and optionally pin it to some cores.

    Linux/macOS: ``nice`` (threads made afterwards inherit it); Windows: the below-normal
    priority class. Call before any compute thread starts.
    """
    applied: dict = {"nice": 0, "cpus": None}
    if nice > 0:
        if sys.platform == "win32":  # pragma: no cover - Windows only
            import ctypes

            below_normal = 0x00004000
            ctypes.windll.kernel32.SetPriorityClass(ctypes.windll.kernel32.GetCurrentProcess(), below_normal)
            applied["nice"] = "below_normal"
        else:
            try:
                applied["nice"] = os.nice(nice)  # returns the new niceness
            except OSError:
                applied["nice"] = os.nice(0)
    if cpus:
        if hasattr(os, "sched_setaffinity"):
            _pin(cpus)
            applied["cpus"] = sorted(os.sched_getaffinity(0))
        else:  # pragma: no cover - macOS has no affinity API; Windows would use SetProcessAffinityMask
            applied["cpus"] = "unsupported"
    return applied


def _pin(cpus: list[int]) -> None:
    """Pin this process to ``cpus`` (ids the machine has: ``Settings.validate``), or refuse in one line.

    Linux drops ids outside the process's cpuset (a container's, say) without a word, and fails only when
    none is left: either way the sidecar would not run where it was told to.
    """
    given = ",".join(map(str, cpus))
    try:
        os.sched_setaffinity(0, set(cpus))
    except OSError as exc:
        raise SettingsError(f"bad --cpus {given!r}: this process may not run on them ({exc.strerror})") from None
    left_out = sorted(set(cpus) - os.sched_getaffinity(0))
    if left_out:
        raise SettingsError(f"bad --cpus {given!r}: this process may not run on CPU {', '.join(map(str, left_out))}")
