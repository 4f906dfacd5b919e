"""NPC state: a persona, a bounded conversation history, and its place in each model's KV cache.

Prompts are rendered with the model's own chat template from the persona and the
history; the runtime then reuses whatever prefix of the rendered tokens is already
in the NPC's KV sequence, so a new line only pays for its own tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from npcai.errors import BadRequest
from npcai.model.kv import KvSeq

#: Persona of decisions made without a named NPC.
ANONYMOUS_PERSONA = "You decide what a character in a video game does. Answer only with the requested format."

#: How a choice is asked when the decision names no lead of its own: the situation, then this
#: question, and the answer starts with DEFAULT_LEAD, which each option completes. Measured on the
#: game set (docs/QUALITY.md), the question beat "I decide to" (SmolLM2: 65 % against 58 %) and the
#: bare option after the chat's answer turn (45 %); "I should" after it scores as well as "The
#: sensible thing to do is to" (69.4 against 68.2 %; Gemma 62.4 against 61.2 %) with 5 tokens less
#: in every decision's step, and without the question it fell to 57 %.
DECISION_QUESTION = "What should you do?"
DEFAULT_LEAD = "I should"


def persona_name(persona: str) -> str | None:
    """The name a persona gives its NPC ("You are Brom, the blacksmith" -> "Brom"), if it starts so."""
    m = _NAMED.match(persona)
    return m.group(1) if m else None


_NAMED = re.compile(r"\s*You are (?:called |named )?([A-Z][\w'-]*(?: [A-Z][\w'-]*)?)(?=[,.;:!\s])")


def as_question(situation: str) -> str:
    """The situation asked as a decision (left as it is when it already asks something)."""
    situation = situation.strip()
    return situation if situation.endswith("?") else f"{situation} {DECISION_QUESTION}"

STATE_VERSION = 1


@dataclass
class WriterSlot:
    """Which job is extending an NPC's history right now. Shared by a redefinition with the
    definition it replaces, since both write the same KV sequences."""

    writer: object | None = None


@dataclass
class Npc:
    id: str
    persona: str
    role: str = "dialogue"
    seed: int | None = None
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, content), oldest first
    examples: list[dict[str, str]] = field(default_factory=list)  # worked decisions: {situation, choice}
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {name, description, args}
    kv: dict[int, KvSeq] = field(default_factory=dict)  # keyed by id(runtime)
    slot: WriterSlot = field(default_factory=WriterSlot)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @property
    def writer(self) -> object | None:
        """The job currently extending the history, if any."""
        return self.slot.writer

    @writer.setter
    def writer(self, job: object | None) -> None:
        self.slot.writer = job

    def kv_for(self, runtime: object) -> KvSeq:
        return self.kv.setdefault(id(runtime), KvSeq())

    def chat(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        """Persona, worked examples, history, then ``extra``: the examples sit in the cached prefix."""
        return self.persona_chat(*self.messages, *extra)

    def persona_chat(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        """Persona, who the NPC is, worked examples (each a situation and the sentence that answers
        it), then ``extra``."""
        shots = [turn for e in self.examples
                 for turn in (("user", as_question(e["situation"])), ("assistant", f"{DEFAULT_LEAD} {e['choice']}."))]
        return [("system", self.persona), *self._identity(), *shots, *extra]

    def _identity(self) -> tuple[tuple[str, str], ...]:
        """A first exchange in which the NPC says its name: tiny models keep a name they have said
        far better than one they were only told (SmolLM2's Brom called himself Grimbold without it)."""
        name = persona_name(self.persona)
        return (("user", "Who are you?"), ("assistant", f"I am {name}.")) if name else ()

    def drop_oldest_turn(self) -> bool:
        """Let the oldest exchange give way; False when only the persona is left."""
        if not self.messages:
            return False
        del self.messages[0]
        while self.messages and self.messages[0][0] == "assistant":
            del self.messages[0]
        return True

    def forget(self) -> None:
        self.messages.clear()

    def save(self) -> bytes:
        """Portable state for a game save: persona and history, not model internals."""
        return msgpack.packb({"v": STATE_VERSION, "persona": self.persona, "role": self.role, "seed": self.seed,
                              "messages": [list(m) for m in self.messages], "examples": self.examples,
                              "actions": list(self.actions.values())},
                             use_bin_type=True)

    @classmethod
    def load(cls, npc_id: str, state: bytes) -> "Npc":
        try:
            data: Any = msgpack.unpackb(state, raw=False)
            if not isinstance(data, dict) or data.get("v") != STATE_VERSION:
                raise ValueError("not an npcai NPC state")
            messages = [(str(r), str(c)) for r, c in data["messages"]]
            if any(r not in ("user", "assistant") for r, _ in messages):
                raise ValueError("unknown message role")
            seed = data.get("seed")
            examples = [{"situation": str(e["situation"]), "choice": str(e["choice"])}
                        for e in data.get("examples") or []]
            actions = {str(a["name"]): {"name": str(a["name"]), "description": str(a.get("description", "")),
                                        "args": dict(a["args"])} for a in data.get("actions") or []}
            return cls(npc_id, str(data["persona"]), str(data.get("role") or "dialogue"),
                       seed if isinstance(seed, int) else None, messages, examples, actions)
        except (ValueError, KeyError, TypeError, msgpack.exceptions.UnpackException) as exc:
            raise BadRequest(f"state is not a saved NPC: {exc}") from None
