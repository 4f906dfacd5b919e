"""The KV pool: which sequence of a model's KV cache each NPC holds, and lanes of tokens bound for them.

Each resident NPC keeps its own sequence (its own KV stream), so a step's attention scans only that
NPC's cells; idle NPCs are parked in host memory when sequences run out and restored on their turn.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from npcai.model.native import Context


@dataclass
class KvSeq:
    """An NPC's sequence in one model's KV cache: which tokens are evaluated there."""

    seq: int | None = None
    tokens: list[int] = field(default_factory=list)
    users: int = 0  # jobs reading or writing it; only an unused sequence may be evicted
    parked: tuple[bytes, list[int]] | None = None  # its cells and tokens in host memory while it has no seq

    @property
    def evictable(self) -> bool:
        return self.users == 0


@dataclass
class Lane:
    """Tokens waiting to be evaluated in one sequence, and which logits the job wants back."""

    seq: int
    pos: int
    pending: list[int]
    all_logits: bool = False  # every token's logits (choice scoring), else only the last one's
    kv: KvSeq | None = None  # the NPC sequence this lane extends, kept in sync as tokens land
    rows: list[int] = field(default_factory=list)  # batch rows holding the wanted logits after a step

    @property
    def ready(self) -> bool:
        """All tokens evaluated and the wanted logits are available."""
        return not self.pending and bool(self.rows)


class SeqPool:
    """Hands out KV sequence ids. Idle NPC sequences give way least recently used first; their
    cells wait in host memory (up to ``park_bytes``, oldest dropped first) and are copied back
    when the NPC returns, instead of being evaluated again."""

    def __init__(self, ctx: Context, n_seq: int, park_bytes: int = 0):
        self._ctx = ctx
        self._free = list(range(n_seq - 1, -1, -1))
        self._npc: OrderedDict[int, KvSeq] = OrderedDict()  # seq -> owner, oldest use first
        self._parked: OrderedDict[int, KvSeq] = OrderedDict()  # id(owner) -> owner, oldest first
        self._parked_bytes = 0
        self.park_bytes = park_bytes
        self.evictions = 0
        self.restores = 0
        self.moves = 0

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def parked(self) -> dict[str, float]:
        return {"parked": len(self._parked), "parked_mb": round(self._parked_bytes / 2**20, 1),
                "restores": self.restores}

    def can_acquire(self) -> bool:
        """Whether ``acquire`` would give a sequence now: one is free, or an idle NPC's could give way."""
        return bool(self._free) or any(kv.evictable for kv in self._npc.values())

    def acquire(self) -> int | None:
        if not self._free and not self.evict_one():
            return None
        return self._free.pop()

    def acquire_for(self, kv: KvSeq) -> int | None:
        """Give an NPC its sequence (re-acquiring one if it was evicted, with its parked cells)."""
        if kv.seq is None:
            seq = self.acquire()
            if seq is None:
                return None
            kv.seq, kv.tokens = seq, []
            self._npc[seq] = kv
            self._restore(kv)
        self._npc.move_to_end(kv.seq)
        return kv.seq

    def release(self, seq: int) -> None:
        self._ctx.seq_rm(seq)
        owner = self._npc.pop(seq, None)
        if owner is not None:
            owner.seq, owner.tokens = None, []
        self._free.append(seq)

    def evict_one(self) -> bool:
        seq = next((seq for seq, kv in self._npc.items() if kv.evictable), None)
        if seq is None:
            return False
        self._evict(seq)
        return True

    def _evict(self, seq: int) -> None:
        self._park(self._npc[seq])
        self.release(seq)
        self.evictions += 1

    def is_free(self, seq: int) -> bool:
        return seq in self._free

    def can_take(self, seq: int) -> bool:
        """Whether ``seq`` is free, or held by an idle NPC that could give way."""
        owner = self._npc.get(seq)
        return self.is_free(seq) or (owner is not None and owner.evictable)

    def move(self, kv: KvSeq, dst: int) -> None:
        """Move an NPC's cells to sequence ``dst``, which ``can_take``: an idle NPC there gives way."""
        if not self.is_free(dst):
            self._evict(dst)
        src = kv.seq
        self._free.remove(dst)
        self._ctx.seq_fork(src, dst, len(kv.tokens))
        self._ctx.seq_rm(src)
        del self._npc[src]
        self._npc[dst] = kv
        kv.seq = dst
        self._free.append(src)
        self.moves += 1

    def _park(self, kv: KvSeq) -> None:
        if not kv.tokens or self.park_bytes <= 0:
            return
        data = self._ctx.seq_save(kv.seq)
        if len(data) > self.park_bytes:
            return
        while self._parked_bytes + len(data) > self.park_bytes:
            _, oldest = self._parked.popitem(last=False)
            self._unpark(oldest)
        kv.parked = (data, list(kv.tokens))
        self._parked[id(kv)] = kv
        self._parked_bytes += len(data)

    def _unpark(self, kv: KvSeq) -> tuple[bytes, list[int]] | None:
        parked, kv.parked = kv.parked, None
        if parked is not None:
            self._parked.pop(id(kv), None)
            self._parked_bytes -= len(parked[0])
        return parked

    def _restore(self, kv: KvSeq) -> None:
        parked = self._unpark(kv)
        if parked is not None and self._ctx.seq_load(kv.seq, parked[0]):
            kv.tokens = parked[1]
            self.restores += 1
