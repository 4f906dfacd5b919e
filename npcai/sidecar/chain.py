"""Chains: several steps (decide, say, observe, route) in one request, each fed by the ones before.

A game's turn is often a pipeline: decide an intent, say a line given it, decide an emotion for the
animation. Sent one by one, each step costs a round trip and an idle gap while the game reads the
reply and sends the next. A chain runs them back to back inside the sidecar: each step is an
ordinary request (a relay's sub-request), started the moment the one before it ends.

- ``{name}`` in a step's strings is replaced by the value of the earlier step whose ``as`` is
  ``name`` (a say's text; a map or list as JSON). Every reference is checked before anything runs.
- One ``deadline_ms`` covers the chain: each step gets a share of the time left, in proportion to
  its estimated cost (``scheduler.deadline_share``). A step that misses its share answers with its own
  ``fallback``, and that fallback feeds the steps after it.
- A decision step whose answer is fixed by its inputs (temperature 0, or a seed) is cached by those
  inputs, the NPC's persona and history included: repeated, it costs nothing (``StepCache``).
- A ``route`` step asks the router (the ``router`` role's model, else the decision model) which of
  several roles fits a request, from each role's one-line description; later steps may put the
  chosen role in their ``role``. The roles and their descriptions are the router's persona (an NPC
  of the chain's own, ``router``), which the option scorer keeps evaluated: a route evaluates the
  request's own tokens and the roles' names, not the listing again.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from typing import Any, Hashable

from npcai import protocol as P
from npcai.errors import BadRequest, NpcaiError
from npcai.sidecar.npc import Npc
from npcai.sidecar.relay import ENVELOPE, Relay
from npcai.sidecar.scheduler import deadline_share

STEP_OPS = ("decide", "say", "observe", "route")
_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_AS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: A regex is a pattern (`\p{L}` is no step); a step's envelope fields are the chain's, ignored in the step.
_NOT_SUBSTITUTED = frozenset({"as", "schema", "regex", "fallback"}) | ENVELOPE
_ROUTE_FIELDS = {"op", "as", "text", "choices", "fallback"}
#: The router's framing: the roles and what each is for (its persona), the request, and a lead that a
#: role's name completes.
ROUTER_PERSONA = "You pass each request to the helper that fits it best."
ROUTE_QUESTION = "Which helper should handle it?"
ROUTE_LEAD = "The helper for this request is"
#: Time kept back from a chain's deadline for its last reply to go out.
_MARGIN_S = 0.005
_SAY_TOKENS = 64  # a say step's default max_tokens, for cost estimates


def check_chain(steps: list[dict[str, Any]], limits: P.Limits, role_info: dict[str, str],
                roles: set[str]) -> None:
    """Refuse a chain that cannot run, before any step does: too many steps, an unknown kind, a
    repeated or missing ``as``, a ``{name}`` that is not an earlier step's, a step's own fields."""
    if not steps:
        raise BadRequest("field 'steps' of op 'chain' must hold at least one step")
    if len(steps) > limits.max_chain_steps:
        raise BadRequest(f"{len(steps)} steps exceed max_chain_steps={limits.max_chain_steps}")
    names = [step.get("as") for step in steps]
    for i, step in enumerate(steps):
        where = f"step {i}"
        op, name = step.get("op"), step.get("as")
        if step.get("deadline_ms") is not None:  # nil counts as absent
            raise BadRequest(f"{where}: a step has no deadline_ms of its own; the chain's is shared out")
        if op not in STEP_OPS:
            raise BadRequest(f"{where}: 'op' must be one of {', '.join(STEP_OPS)}, got {op!r}")
        if not isinstance(name, str) or not _AS.match(name):
            raise BadRequest(f"{where}: 'as' must be a name (a letter or _, then letters, digits or _)")
        if name in names[:i]:
            raise BadRequest(f"{where}: 'as' {name!r} is already an earlier step's")
        for ref in _refs(step):
            if ref not in names:
                raise BadRequest(f"{where} ({name!r}) refers to {{{ref}}}, which no step is named")
            if ref not in names[:i]:
                raise BadRequest(f"{where} ({name!r}) refers to {{{ref}}}, which is not an earlier step: "
                                 f"a chain runs in order and cannot loop")
        if op == "route":
            _check_route(step, where, role_info, roles)
        else:
            message = {k: v for k, v in step.items() if k != "as" and k not in ENVELOPE}  # as spawned (relay.py)
            message.update(v=P.VERSION, id=0, op=op)
            try:
                P.parse_request(message)
            except NpcaiError as err:
                raise type(err)(f"{where} ({name!r}): {err.message}") from None


def _check_route(step: dict[str, Any], where: str, role_info: dict[str, str], roles: set[str]) -> None:
    unknown = set(step) - _ROUTE_FIELDS - ENVELOPE  # the envelope is the chain's: ignored here as in any step
    if unknown:
        raise BadRequest(f"{where}: a route step takes {', '.join(sorted(_ROUTE_FIELDS))}, not {sorted(unknown)[0]!r}")
    if not isinstance(step.get("text"), str):
        raise BadRequest(f"{where}: a route step needs 'text' (the request to route)")
    choices = step.get("choices")
    if not (isinstance(choices, list) and choices and all(isinstance(c, str) and c for c in choices)
            and len(set(choices)) == len(choices)):
        raise BadRequest(f"{where}: a route step needs 'choices', a list of distinct role names")
    for role in choices:
        if _REF.search(role):
            continue
        if role not in roles:
            raise BadRequest(f"{where}: no model serves role {role!r}; roles: {', '.join(sorted(roles))}")
        if role not in role_info:
            raise BadRequest(f"{where}: role {role!r} has no description (give --role-info {role}=\"...\" or "
                             f"hello's role_info)")


def _refs(step: dict[str, Any]) -> list[str]:
    return [m.group(1) for key, value in step.items() if key not in _NOT_SUBSTITUTED
            for text in _strings(value) for m in _REF.finditer(text)]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, str)]
    return []


def as_text(value: Any) -> str:
    """How a step's value reads inside a later step's string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def substitute(step: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The step's fields with every ``{name}`` replaced by that step's value."""
    def sub(text: str) -> str:
        return _REF.sub(lambda m: as_text(values[m.group(1)]), text)

    out: dict[str, Any] = {}
    for key, value in step.items():
        if key in _NOT_SUBSTITUTED:
            out[key] = value
        elif isinstance(value, str):
            out[key] = sub(value)
        elif isinstance(value, list):
            out[key] = [sub(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, dict) and key != "schema":
            out[key] = {k: sub(v) if isinstance(v, str) else v for k, v in value.items()}
        else:
            out[key] = value
    return out


class StepCache:
    """Answers of decision steps by their exact inputs: a bounded LRU."""

    def __init__(self, size: int = 256):
        self._items: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()
        self._size = size

    def get(self, key: Hashable | None) -> dict[str, Any] | None:
        hit = self._items.get(key) if key is not None else None
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key: Hashable | None, result: dict[str, Any]) -> None:
        if key is None:
            return
        self._items[key] = result
        while len(self._items) > self._size:
            self._items.popitem(last=False)


def router_npc(role_info: dict[str, str], roles: list[str]) -> Npc:
    """The NPC a route is decided as: its persona lists ``roles`` with their descriptions."""
    listing = "\n".join(f"- {role}: {role_info[role]}" for role in roles)
    return Npc("", f"{ROUTER_PERSONA}\n\nHelpers:\n{listing}")


_RESULT_FIELDS = ("value", "text", "used_fallback", "timed_out", "finish_reason", "probs", "action", "action_probs")


class Chain(Relay):
    """``chain``: runs its steps in order, each as a sub-request, and answers with every step's result."""

    def __init__(self, req, rt, emit, npc_ctx, engine):
        super().__init__(req, rt, emit, npc_ctx, engine)
        # A field sent as nil counts as absent, in a chain's steps too (docs/PROTOCOL.md, "Requests").
        self.steps: list[dict[str, Any]] = [{k: v for k, v in s.items() if v is not None}
                                            for s in req.fields["steps"]]
        self.values: dict[str, Any] = {}
        self.probs: dict[str, dict[str, float]] = {}
        self._i = -1
        self._sub: P.Request | None = None
        self._sub_deadline: float | None = None
        self._streamed: list[str] = []
        self._key: Hashable | None = None
        self._key_of: tuple[str, dict[str, Any], Npc | None] | None = None  # what _key was made of
        self.fell_back = False
        self.tokens = 0  # generated by its steps (a cached step generated none)

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        while not self.finished:
            self._i += 1
            if self._i == len(self.steps):
                return self._done()
            try:
                if self._begin_step():
                    return
            except NpcaiError as err:  # a step its earlier steps' values made invalid (or a role gone)
                return self._fail(err.code, err.message)

    def _begin_step(self) -> bool:
        """Start step ``_i``: True when it runs now, False when the step cache answered it."""
        step = {k: v for k, v in substitute(self.steps[self._i], self.values).items() if k not in ENVELOPE}
        op = self.steps[self._i]["op"]
        step.pop("as")
        router = None
        if op == "route":
            op, (step, router) = "decide", self._routing(step)
        self._key, self._key_of = self._cache_key(op, step, router), (op, step, router)
        hit = self.engine.step_cache.get(self._key)
        if hit is not None:
            self._record({**hit, "cached": True})
            return False
        self._streamed = []
        self._sub_deadline = self._share(op, step)
        i = self._i
        sub = self.spawn(op, step, self._heard, self._sub_deadline, npc=router)
        if self._i == i and not self.finished:  # an observe is answered within spawn, and the next step begun
            self._sub = sub
        return True

    def _fail(self, code: str, message: str) -> None:
        """End the chain with a step's error, named by the step (docs/PROTOCOL.md, "Chains")."""
        where = f"step {self._i} ({self.steps[self._i]['as']!r})"
        self.finish(P.reply(self.req.id, P.ERROR, code=code, message=f"{where}: {message}"))

    def _routing(self, step: dict[str, Any]) -> tuple[dict[str, Any], Npc]:
        """A route step as a choice decision of the router role, made as the router: its persona lists
        the roles and their descriptions (a prefix the option scorer keeps evaluated, the same for every
        route over these roles), the request is the situation, and each role's name completes a lead."""
        info = self.engine.role_info
        for role in step["choices"]:  # roles named by an earlier step's value are checked now
            if role not in info or role not in self.engine.runtimes:
                raise BadRequest(f"role {role!r} is not a described role this sidecar serves")
        fields = {"situation": f"Request: {step['text'].strip()}\n\n{ROUTE_QUESTION}", "choices": step["choices"],
                  "lead": ROUTE_LEAD, "role": "router" if "router" in self.engine.runtimes else "decision"}
        if "fallback" in step:
            fields["fallback"] = step["fallback"]
        return fields, router_npc(info, step["choices"])
    def _cache_key(self, op: str, step: dict[str, Any], router: Npc | None = None) -> Hashable | None:
        """The step's exact inputs, when they fix its answer: a decision at temperature 0 (the default)
        or with a seed. The NPC's persona (a router's: the roles' descriptions), examples, actions and
        history are inputs too."""
        if op != "decide" or (step.get("temperature", 0) > 0 and "seed" not in step):
            return None
        npc = router or (self.engine.npcs.get(step.get("npc")) if "npc" in step else None)
        state = (npc.persona, json.dumps(npc.examples), json.dumps(list(npc.actions.values()), sort_keys=True),
                 tuple(npc.messages)) if npc is not None else None
        return json.dumps({k: v for k, v in step.items() if k != "fallback"}, sort_keys=True, default=str), state

    def _share(self, op: str, step: dict[str, Any]) -> float | None:
        """This step's deadline: its share of the chain's time left, by estimated cost."""
        deadline = self.req.deadline
        if deadline is None:
            return None
        costs = [self._cost_s(op, step)] + [self._cost_s("decide" if s["op"] == "route" else s["op"], s)
                                             for s in self.steps[self._i + 1:]]
        return deadline_share(deadline - _MARGIN_S, time.monotonic(), costs)

    def _cost_s(self, op: str, step: dict[str, Any]) -> float:
        est = self.rt.estimate_s
        if op == "observe":
            return est(1)
        if op == "say":
            return est(32) + step.get("max_tokens", _SAY_TOKENS) * est(1)
        return 2 * est(32) + (3 * est(1) if "schema" in step or "actions" in step else 0)

    def _heard(self, reply: dict[str, Any]) -> None:
        event = reply["event"]
        if event in (P.TOKEN, P.SENTENCE):
            if event == P.TOKEN:
                self._streamed.append(reply["text"])
            return self.emit({**reply, "step": self._i})
        self._sub = None
        if event in (P.ERROR, P.CANCELLED):
            return self._fail(reply.get("code", "cancelled"), reply.get("message", "cancelled"))
        self.tokens += reply.get("tokens", 0)
        if event == P.OK:  # observe
            reply = {"value": None, "text": "", "used_fallback": False, "timed_out": False, "finish_reason": "stop"}
        result = {k: reply[k] for k in _RESULT_FIELDS if k in reply}
        # Kept only when the NPC is as it was when the step began: an observe taken meanwhile may or may not
        # be in what the step read, and its answer must not stand for the inputs of either.
        if not result.get("used_fallback") and self._key_of and self._cache_key(*self._key_of) == self._key:
            self.engine.step_cache.put(self._key, result)
        self._record({**result, "cached": False})
        self._next()

    def _record(self, result: dict[str, Any]) -> None:
        name = self.steps[self._i]["as"]
        self.values[name] = result.get("value")
        if "probs" in result:
            self.probs[name] = result["probs"]
        self.fell_back |= bool(result.get("used_fallback"))
        self.emit(P.reply(self.req.id, P.STEP, step=self._i, **{"as": name}, **result))

    def tick(self, now: float) -> None:
        """A step past its share of the deadline answers with its own fallback, which the chain feeds on."""
        if self._sub is None or self._sub_deadline is None or now < self._sub_deadline:
            return
        sub, self._sub = self._sub, None
        self.drop(sub)
        text = "".join(self._streamed)
        self.tokens += len(self._streamed)  # what it generated: chunks streamed, as for a say timed out
        self._record({"value": text if sub.op == "say" and "fallback" not in sub.fields else sub.fallback,
                      "text": text, "used_fallback": True, "timed_out": True, "finish_reason": "deadline",
                      "cached": False})
        self._next()

    def _done(self) -> None:
        self.finish(P.done(self.req.id, value=self.values, results=self.values, probs=self.probs,
                           text=as_text(self.values[self.steps[-1]["as"]]), tokens=self.tokens, finish_reason="stop",
                           timed_out=False, used_fallback=self.fell_back, timing=self.timing(), usage=self.usage))
