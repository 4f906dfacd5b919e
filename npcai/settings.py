"""One settings schema for the sidecar: defaults, docs, and the CLI flags come from here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .protocol import Limits

#: Where grammar names in ``decide`` are looked up when no --grammar-dir is given.
DEFAULT_GRAMMAR_DIR = Path(__file__).resolve().parent.parent / "grammars"


def _opt(help: str, **kw) -> dict:
    return {"help": help, **kw}


@dataclass
class Settings:
    """Everything `npcai serve` can be told. Each field is a --flag of the same name."""

    endpoint: str = field(default="tcp://127.0.0.1:0", metadata=_opt(
        "ZeroMQ endpoint to bind (port 0 picks a free port; the bound endpoint is printed)"))
    model: list[str] = field(default_factory=list, metadata=_opt(
        "model, as NAME or ROLE=NAME (NAME is a catalog name or a .gguf path); repeat for several roles",
        action="append"))
    n_ctx: int = field(default=8192, metadata=_opt("KV cache cells per model, shared by all NPCs"))
    npc_ctx: int = field(default=1024, metadata=_opt(
        "context window of one NPC: persona + history + request; oldest turns give way beyond it"))
    n_seq: int = field(default=64, metadata=_opt("KV sequences per model (resident NPCs plus forks)"))
    n_batch: int = field(default=256, metadata=_opt("most tokens evaluated in one model step"))
    threads: int = field(default=0, metadata=_opt(
        "compute threads (0 = all cores but one, leaving the game a core; at least 1)"))
    nice: int = field(default=10, metadata=_opt(
        "lower the sidecar's CPU priority below the game's by this much (POSIX nice; Windows: below normal)"))
    cpus: str = field(default="", metadata=_opt("pin compute to these CPU ids, e.g. 2,3 (Linux)"))
    budget_threads: int = field(default=0, metadata=_opt("budget: most compute threads (0 = --threads)"))
    budget_tokens_per_s: float = field(default=0.0, metadata=_opt("budget: most dialogue tokens per second (0 = no cap)"))
    budget_share: float = field(default=1.0, metadata=_opt("budget: share of wall time the sidecar may compute"))
    frame_ms: float = field(default=0.0, metadata=_opt(
        "the game's target frame time; with frame reports, the sidecar backs off when frames run over"))
    grammar_dir: str = field(default=str(DEFAULT_GRAMMAR_DIR), metadata=_opt(
        "directory where decide's grammar names are looked up"))
    parent_pid: int = field(default=0, metadata=_opt("exit when this process dies (the game's pid)"))
    ready_file: str = field(default="", metadata=_opt(
        "also write the bound endpoint to this file when ready (for launchers that cannot read stdout)"))
    token: str = field(default="", metadata=_opt("shared secret clients must send in hello"))
    max_frame_bytes: int = field(default=Limits.max_frame_bytes, metadata=_opt("largest accepted frame"))
    max_inflight_per_client: int = field(default=Limits.max_inflight_per_client, metadata=_opt(
        "requests one client may have open at once"))
    max_queue: int = field(default=Limits.max_queue, metadata=_opt("requests waiting for the model, in all"))
    max_npcs: int = field(default=Limits.max_npcs, metadata=_opt("NPCs defined at once"))
    max_prompt_tokens: int = field(default=Limits.max_prompt_tokens, metadata=_opt(
        "tokens one request's text may add to the prompt"))
    verbose: bool = field(default=False, metadata=_opt("log warnings and internal errors in more detail",
                                                       action="store_true"))

    @property
    def limits(self) -> Limits:
        return Limits(
            max_frame_bytes=self.max_frame_bytes,
            max_inflight_per_client=self.max_inflight_per_client,
            max_queue=self.max_queue,
            max_npcs=self.max_npcs,
            max_prompt_tokens=self.max_prompt_tokens,
        )

    @property
    def budget(self) -> "Budget":
        from .budget import Budget

        return Budget(threads=self.budget_threads, tokens_per_s=self.budget_tokens_per_s, share=self.budget_share,
                      frame_ms=self.frame_ms)

    @property
    def compute_threads(self) -> int:
        """Leave a core to the game: all but one of the cores this process may use."""
        if self.threads > 0:
            return self.threads
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return max(1, cores - 1)

    @classmethod
    def flags(cls):
        """(flag name, field) pairs for building the CLI."""
        return [(f.name.replace("_", "-"), f) for f in fields(cls)]
