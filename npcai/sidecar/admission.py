"""Admission: the checks a request needs a model for, in one place.

``protocol.parse_request`` has already checked everything that needs no model (types, ranges, a
prompt's length in characters). What is left needs the model that will serve the request: which
model that is (by role), how many of its tokens a prompt text is, and whether a decision's
constraint is one it can compile. The engine asks here before it queues any work.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from npcai import protocol as P
from npcai.errors import BadRequest, TooLarge
from npcai.model import catalog, choices
from npcai.model.runtime import Runtime
from npcai.sidecar.npc import Npc
from npcai.sidecar.settings import Settings

#: The role each op uses when the request (or its NPC) names none.
#: Of an NPC's window, what its persona and examples must leave: a short exchange and a default 64-token line
#: (a persona that filled the window was accepted, and every request to the NPC then failed too_large).
ROOM_FOR_REQUESTS = 96
DEFAULT_ROLES = {"npc": "dialogue", "say": "dialogue", "observe": "dialogue", "decide": "decision"}


def load_runtimes(settings: Settings, models: dict[str, Path]) -> dict[str, Runtime]:
    """Load each model once; ``models`` maps role -> GGUF path, and roles sharing a file share its runtime."""
    runtimes: dict[str, Runtime] = {}
    by_path: dict[Path, Runtime] = {}
    for role, path in models.items():
        rt = by_path.get(path)
        if rt is None:
            entry = catalog.entry_for(path)
            rt = Runtime(path, name=entry.name if entry else path.stem, n_ctx=settings.n_ctx,
                         n_seq=settings.n_seq, n_batch=settings.n_batch, threads=settings.compute_threads,
                         grammar_dir=Path(settings.grammar_dir), flash_attn=_flash_attn(settings, entry),
                         scorer_flash_attn=entry.scorer_flash_attn if entry else None,
                         park_bytes=settings.park_mb * 2**20,
                         scoring_path=(catalog.scoring_weights(entry.name) if entry and
                                       settings.scoring_weights == "auto" else None),
                         choice_temperature=entry.choice_temperature if entry else choices.DEFAULT_TEMPERATURE,
                         choice_temperature_power=(entry.choice_temperature_power if entry
                                                   else choices.DEFAULT_TEMPERATURE_POWER))
            by_path[path] = rt
        runtimes[role] = rt
    return runtimes


def _flash_attn(settings: Settings, entry: catalog.CatalogModel | None) -> bool | None:
    """The main cache's attention choice: --flash-attn, else the catalog's (None: llama.cpp's)."""
    if settings.flash_attn != "auto":
        return settings.flash_attn == "on"
    return entry.flash_attn if entry else None


class Admission:
    def __init__(self, runtimes: dict[str, Runtime], limits: P.Limits):
        """``runtimes`` maps role -> runtime; the first serves the default roles that no model was named for."""
        self.runtimes = runtimes
        self.limits = limits
        self._default = next(iter(runtimes.values()))

    def runtime(self, op: str, role: str | None) -> Runtime:
        """The model that serves ``role`` (or the op's default role)."""
        role = role or DEFAULT_ROLES[op]
        rt = self.runtimes.get(role)
        if rt is None:
            if role in DEFAULT_ROLES.values():
                return self._default
            raise BadRequest(f"no model serves role {role!r}; roles: {', '.join(self.runtimes)}")
        return rt

    def prompt(self, rt: Runtime, text: str) -> None:
        """Refuse a prompt text of more than ``max_prompt_tokens`` of this model's tokens."""
        n = len(rt.text_tokens(text))
        if n > self.limits.max_prompt_tokens:
            raise TooLarge(f"text of {n} tokens exceeds max_prompt_tokens={self.limits.max_prompt_tokens}")

    def definition(self, rt: Runtime, npc: Npc, npc_ctx: int) -> None:
        """Refuse an NPC whose persona and worked examples leave less than ROOM_FOR_REQUESTS of its window,
        before it replaces anyone:
        defined (its definition job would find out only after the NPC had been installed) or loaded from a save
        (every later request would). Its history is left out: the oldest lines give way as it grows.
        Words that need more tokens than the window holds however they are split are refused by their length
        alone, as a prompt text is: tokenizing a megabyte stalls the model for a fifth of a second."""
        chat = npc.persona_chat()
        chars = sum(len(text) for _, text in chat)
        if chars > npc_ctx * P.MAX_TOKEN_BYTES:
            raise TooLarge(f"persona and examples of {chars} characters cannot fit npc_ctx={npc_ctx}")
        n = len(rt.prefix_tokens(chat))
        if n + ROOM_FOR_REQUESTS > npc_ctx:
            raise TooLarge(f"persona and examples need {n} tokens; npc_ctx is {npc_ctx}, "
                           f"and {ROOM_FOR_REQUESTS} of it is kept for the conversation")

    def constraint(self, rt: Runtime, req: P.DecideRequest) -> Future:
        """Start compiling a decision's schema or grammar: its cheap checks raise here, and the future
        holds the compiled constraint or the compiler's refusal."""
        kind, source = rt.compiler.source_for(req.fields)
        return rt.compiler.submit(kind, source)
