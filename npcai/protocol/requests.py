"""Requests: one frozen dataclass per op, and ``parse_request``, which builds them.

Each op's class says which fields it takes (their wire rule rides in the field's metadata) and,
in ``check``, every range and size rule that needs no model. So a request that comes out of
``parse_request`` is well-formed; what remains is what only a model can tell (how many tokens a
text is, whether a constraint compiles): the sidecar's admission step (npcai/sidecar/admission.py).

A new op is a new class here, decorated with ``@_op("name")`` (add ``immediate=True`` when the
socket thread answers it at once), plus one handler in the server or the engine.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from npcai.errors import BadRequest, TooLarge, UnknownOp
from npcai.protocol.checks import (
    check_budget,
    check_examples,
    check_option_size,
    check_prompt_size,
    check_sampling,
    check_stop_size,
)
from npcai.protocol.frames import VERSION, Limits, is_int

# --- field rules -----------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    check: Callable[[Any], bool]
    kind: str
    required: bool = False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _frame_time(v: Any) -> bool:
    """A frame time a game can have measured: NaN or an infinite one would poison the median and the back-off."""
    return _number(v) and 0 <= v < float("inf")


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _examples(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(e, dict) and isinstance(e.get("situation"), str) and isinstance(e.get("choice"), str)
        and set(e) <= {"situation", "choice"} for e in v)


def _actions(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(a, dict) and isinstance(a.get("name"), str) and isinstance(a.get("description", ""), str)
        and isinstance(a.get("args", {}), dict) and set(a) <= {"name", "description", "args"} for a in v)


def _steps(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, dict) and all(isinstance(k, str) for k in s) for s in v)


def _str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


_STR, _INT, _NUM = _Field(lambda v: isinstance(v, str), "a string"), _Field(is_int, "an integer"), \
    _Field(_number, "a number")
_SEED = _Field(lambda v: is_int(v) and 0 <= v < 1 << 64, "an integer from 0 to 2**64-1")
_ANY = _Field(lambda v: True, "any value")
_BOOL = _Field(lambda v: isinstance(v, bool), "a boolean")
_PICK = _Field(lambda v: isinstance(v, bool) or _str_list(v), "true, false or a list of action names")


def _wire(rule: _Field, *, required: bool = False, name: str | None = None, default: Any = None) -> Any:
    """A request field checked by ``rule``; ``name`` when its wire name differs from the attribute's."""
    rule = dataclasses.replace(rule, required=True) if required else rule
    return field(default=default, metadata={"rule": rule, "wire": name})


# --- the requests ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """The envelope every request has. Subclasses add their op's fields (None when not given)."""

    op: ClassVar[str] = ""
    #: Answered by the server's socket thread at once, never queued behind model work.
    immediate: ClassVar[bool] = False
    #: (attribute, wire name, rule) of each op field: filled in by ``@_op``.
    spec: ClassVar[tuple[tuple[str, str, _Field], ...]] = ()

    id: int
    deadline_ms: int | None = None
    priority: int = 0
    client: bytes = b""
    received: float = 0.0  # time.monotonic() at receipt

    @property
    def deadline(self) -> float | None:
        """Absolute monotonic deadline, or None."""
        return None if self.deadline_ms is None else self.received + self.deadline_ms / 1000.0

    @property
    def has_fallback(self) -> bool:
        return False

    @property
    def fallback(self) -> Any:
        return None

    @property
    def fields(self) -> dict[str, Any]:
        """The op's fields that the request gave, by wire name (as they came)."""
        out = {wire: getattr(self, attr) for attr, wire, _ in self.spec if getattr(self, attr) is not None}
        if self.has_fallback:
            out["fallback"] = self.fallback
        return out

    def check(self, limits: Limits) -> None:
        """Range and size rules that need no model; raise an NpcaiError."""


REQUEST_TYPES: dict[str, type[Request]] = {}


def _op(name: str, *, immediate: bool = False):
    def register(cls: type[Request]) -> type[Request]:
        cls.op, cls.immediate = name, immediate
        cls.spec = tuple((f.name, f.metadata["wire"] or f.name, f.metadata["rule"])
                         for f in dataclasses.fields(cls) if "rule" in f.metadata)
        REQUEST_TYPES[name] = cls
        return cls
    return register


@dataclass(frozen=True, slots=True, kw_only=True)
class _WithFallback(Request):
    """A request that the game can be answered with a value of its own choosing, at its deadline."""

    fallback_value: Any = _wire(_ANY, name="fallback")
    given_fallback: bool = False  # fallback may be given as nil, which is a value too

    @property
    def has_fallback(self) -> bool:
        return self.given_fallback

    @property
    def fallback(self) -> Any:
        return self.fallback_value


@dataclass(frozen=True, slots=True, kw_only=True)
class _Sampled(_WithFallback):
    max_tokens: int | None = _wire(_INT)
    temperature: float | None = _wire(_NUM)
    top_k: int | None = _wire(_INT)
    top_p: float | None = _wire(_NUM)
    seed: int | None = _wire(_SEED)
    role: str | None = _wire(_STR)

    def check(self, limits: Limits) -> None:
        check_sampling(self, limits)


@_op("hello", immediate=True)
@dataclass(frozen=True, slots=True, kw_only=True)
class HelloRequest(Request):
    client_name: str | None = _wire(_STR, name="client")
    token: str | None = _wire(_STR)
    role_info: dict[str, str] | None = _wire(_Field(_str_map, "a map from role to a one-line description"))


@_op("ping", immediate=True)
@dataclass(frozen=True, slots=True, kw_only=True)
class PingRequest(Request):
    pass


@_op("npc")
@dataclass(frozen=True, slots=True, kw_only=True)
class NpcRequest(Request):
    npc: str = _wire(_STR, required=True, default="")
    persona: str = _wire(_STR, required=True, default="")
    role: str | None = _wire(_STR)
    seed: int | None = _wire(_SEED)
    examples: list[dict[str, str]] | None = _wire(_Field(_examples, "a list of {situation, choice} maps of strings"))
    actions: list[dict[str, Any]] | None = _wire(_Field(_actions, "a list of {name, description, args} maps "
                                                                  "(args: a JSON schema map)"))

    def check(self, limits: Limits) -> None:
        check_prompt_size(self, limits)
        check_examples(self.fields, limits)


@_op("say")
@dataclass(frozen=True, slots=True, kw_only=True)
class SayRequest(_Sampled):
    npc: str = _wire(_STR, required=True, default="")
    text: str = _wire(_STR, required=True, default="")
    stream: bool | None = _wire(_BOOL)
    stop: str | list[str] | None = _wire(_Field(lambda v: isinstance(v, str) or _str_list(v),
                                                "a string or a list of strings"))
    soft_max_tokens: int | None = _wire(_INT)
    actions: bool | list[str] | None = _wire(_PICK)

    def check(self, limits: Limits) -> None:
        check_prompt_size(self, limits)
        check_stop_size(self, limits)
        check_sampling(self, limits)


@_op("decide")
@dataclass(frozen=True, slots=True, kw_only=True)
class DecideRequest(_Sampled):
    npc: str | None = _wire(_STR)
    situation: str = _wire(_STR, required=True, default="")
    choices: list[str] | None = _wire(_Field(_str_list, "a list of strings"))
    lead: str | None = _wire(_STR)
    descriptions: dict[str, str] | None = _wire(_Field(_str_map, "a map from choice to the words scored for it"))
    per_byte: bool | None = _wire(_BOOL)
    schema: dict | None = _wire(_Field(lambda v: isinstance(v, dict), "a map (JSON schema)"))
    grammar: str | None = _wire(_STR)
    soft_max_tokens: int | None = _wire(_INT)
    regex: str | None = _wire(_STR)
    actions: bool | list[str] | None = _wire(_PICK)
    #: Not on the wire: set by the sidecar for an action decision's options (``Relay.spawn``'s ``internal``),
    #: how much of each option's prior comes off its score (``choices.probabilities``).
    prior_weights: tuple[float, ...] | None = None

    def check(self, limits: Limits) -> None:
        _check_decide(self)
        check_option_size(self)
        check_prompt_size(self, limits)
        check_sampling(self, limits)


@_op("observe")
@dataclass(frozen=True, slots=True, kw_only=True)
class ObserveRequest(Request):
    npc: str = _wire(_STR, required=True, default="")
    text: str = _wire(_STR, required=True, default="")

    def check(self, limits: Limits) -> None:
        check_prompt_size(self, limits)


@_op("act_result")
@dataclass(frozen=True, slots=True, kw_only=True)
class ActResultRequest(Request):
    npc: str = _wire(_STR, required=True, default="")
    name: str = _wire(_STR, required=True, default="")
    result: str = _wire(_STR, required=True, default="")

    def check(self, limits: Limits) -> None:
        check_prompt_size(self, limits)


@_op("chain")
@dataclass(frozen=True, slots=True, kw_only=True)
class ChainRequest(_WithFallback):
    steps: list[dict[str, Any]] = _wire(_Field(_steps, "a list of step maps"), required=True, default=None)


@_op("cancel", immediate=True)
@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequest(Request):
    target: int = _wire(_INT, required=True, default=0)


@_op("forget")
@dataclass(frozen=True, slots=True, kw_only=True)
class ForgetRequest(Request):
    npc: str = _wire(_STR, required=True, default="")


@_op("save")
@dataclass(frozen=True, slots=True, kw_only=True)
class SaveRequest(Request):
    npc: str = _wire(_STR, required=True, default="")


@_op("load")
@dataclass(frozen=True, slots=True, kw_only=True)
class LoadRequest(Request):
    npc: str = _wire(_STR, required=True, default="")
    state: bytes = _wire(_Field(lambda v: isinstance(v, bytes), "binary"), required=True, default=b"")

    def check(self, limits: Limits) -> None:
        if len(self.state) > limits.max_frame_bytes:
            raise TooLarge("state is larger than a frame may be")


@_op("stats", immediate=True)
@dataclass(frozen=True, slots=True, kw_only=True)
class StatsRequest(Request):
    pass


@_op("shutdown", immediate=True)
@dataclass(frozen=True, slots=True, kw_only=True)
class ShutdownRequest(Request):
    pass


@_op("budget", immediate=True)
@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetRequest(Request):
    threads: int | None = _wire(_INT)
    tokens_per_s: float | None = _wire(_NUM)
    share: float | None = _wire(_NUM)
    frame_ms: float | None = _wire(_NUM)

    def check(self, limits: Limits) -> None:
        check_budget(self.fields)


@_op("frame", immediate=True)
@dataclass(frozen=True, slots=True, kw_only=True)
class FrameRequest(Request):
    frame_ms: float | list[float] = _wire(
        _Field(lambda v: _frame_time(v) or (isinstance(v, list) and all(_frame_time(x) for x in v)),
               "a frame time (a finite number >= 0, ms) or a list of them"), required=True, default=0.0)

    @property
    def times(self) -> list[float]:
        """The frame times reported, the latest 120 at most."""
        times = self.frame_ms if isinstance(self.frame_ms, list) else [self.frame_ms]
        return [float(t) for t in times[-120:]]


#: The fields each op takes, besides the envelope (v, id, op, deadline_ms, priority): wire name -> rule.
OPS: dict[str, dict[str, _Field]] = {op: {wire: rule for _, wire, rule in cls.spec}
                                     for op, cls in REQUEST_TYPES.items()}
#: Ops answered by the server thread at once, never queued behind model work.
IMMEDIATE_OPS = frozenset(op for op, cls in REQUEST_TYPES.items() if cls.immediate)
_DEFAULT_LIMITS = Limits()


# --- parsing -------------------------------------------------------------------

def parse_request(message: dict[str, Any], client: bytes = b"", received: float = 0.0,
                  limits: Limits | None = None) -> Request:
    """The typed request a decoded message holds, every check that needs no model passed; raise an
    NpcaiError with a clear message otherwise."""
    req = typed_request(message, client, received)
    req.check(limits or _DEFAULT_LIMITS)
    return req


def typed_request(message: dict[str, Any], client: bytes = b"", received: float = 0.0) -> Request:
    """The first half of ``parse_request``: the envelope and each field's type, not yet ``check``ed. (The
    server checks who sent a request before its ranges, and counts a refused one in its op's stats.)"""
    if message.get("v") != VERSION or not is_int(message.get("v")):  # not true, not 1.0
        raise BadRequest(f"field 'v' must be {VERSION} (protocol version), got {message.get('v')!r}")
    rid = message.get("id")
    if not is_int(rid):
        raise BadRequest("field 'id' must be an integer")
    op = message.get("op")
    if not isinstance(op, str):
        raise BadRequest("field 'op' must be a string")
    cls = REQUEST_TYPES.get(op)
    if cls is None:
        raise UnknownOp(f"unknown op {op!r}; known ops: {', '.join(sorted(REQUEST_TYPES))}")
    deadline = message.get("deadline_ms")
    if deadline is not None and not (is_int(deadline) and deadline >= 0):
        raise BadRequest("field 'deadline_ms' must be a non-negative integer")
    priority = message.get("priority")
    if priority is None:  # absent, or nil, which counts as absent
        priority = 0
    elif not is_int(priority):
        raise BadRequest("field 'priority' must be an integer")
    values: dict[str, Any] = {}
    for attr, name, rule in cls.spec:
        if name not in message or (message[name] is None and name != "fallback"):  # nil counts as absent
            if rule.required:
                raise BadRequest(f"op {op!r} needs field {name!r} ({rule.kind})")
            continue
        value = message[name]
        if not rule.check(value):
            raise BadRequest(f"field {name!r} of op {op!r} must be {rule.kind}{_what_is_wrong(rule, value)}")
        values[attr] = value
    if "fallback_value" in values:
        values["given_fallback"] = True
    return cls(id=rid, deadline_ms=deadline, priority=priority, client=client, received=received, **values)


def _visible(text: str) -> bool:
    """Whether ``text`` shows anything: not only white space and format characters (zero-width spaces and
    joiners, a byte-order mark), which a player could not read as an option."""
    return any(not c.isspace() and unicodedata.category(c) != "Cf" for c in text)


def _what_is_wrong(rule: _Field, value: Any) -> str:
    """The first entry a list field's rule refuses, with its shape ("; entry 3 is {name: int}"), or the
    value's type: a field that holds sixteen actions should say which one is wrong, and how."""
    if isinstance(value, list) and rule.check([]):
        for i, entry in enumerate(value):
            if not rule.check([entry]):
                return f"; entry {i} is {_shape(entry)}"
    return f", got {type(value).__name__}"


def _shape(value: Any) -> str:
    if isinstance(value, dict):
        keys = [f"{str(k)[:24]}: {type(v).__name__}" for k, v in list(value.items())[:8]]
        return "{" + ", ".join(keys) + (", ..." if len(value) > 8 else "") + "}"
    return type(value).__name__


def _check_decide(req: DecideRequest) -> None:
    if req.actions == []:  # a say's empty list allows no action; a decision over none cannot be made
        raise BadRequest("field 'actions' of op 'decide' is an empty list: name at least one of the NPC's "
                         "actions, or give true for all of them")
    given = [k for k in ("choices", "schema", "grammar", "regex", "actions") if getattr(req, k) not in (None, False)]
    if len(given) != 1:
        raise BadRequest("op 'decide' needs exactly one of 'choices', 'schema', 'grammar', 'regex' or 'actions'")
    if given == ["regex"] and not req.regex:
        raise BadRequest("field 'regex' must be a non-empty regular expression")
    if given == ["actions"]:
        if req.npc is None:
            raise BadRequest("op 'decide' with 'actions' needs 'npc': actions are declared with the NPC")
        if req.descriptions is not None:
            raise BadRequest("field 'descriptions' goes with 'choices' (an action's description is declared)")
        if req.per_byte is not None:
            raise BadRequest("field 'per_byte' goes with 'choices'")
        return
    choices = req.choices
    if choices is not None:
        if not choices or not all(map(_visible, choices)):
            raise BadRequest("field 'choices' must be a non-empty list of strings with something visible in each "
                             "(not only spaces or invisible characters such as U+200B)")
        if len({c.strip() for c in choices}) != len(choices):  # an option is scored without its outer spaces
            raise BadRequest("field 'choices' must not repeat an option (outer spaces aside)")
        descriptions = req.descriptions or {}
        unknown = sorted(set(descriptions) - set(choices))
        if unknown:
            raise BadRequest(f"field 'descriptions' names {unknown[0]!r}, which is not one of the choices")
        if any(not d.strip() for d in descriptions.values()):
            raise BadRequest("field 'descriptions' must not hold an empty description")
    elif req.lead is not None or req.descriptions is not None or req.per_byte is not None:
        raise BadRequest("fields 'lead', 'descriptions' and 'per_byte' go with 'choices'")
