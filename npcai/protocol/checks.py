"""Range and size rules of request fields that need no model (the request classes' ``check``s)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from npcai.errors import BadRequest, TooLarge
from npcai.protocol.frames import Limits

if TYPE_CHECKING:
    from npcai.protocol.requests import Request

_SAMPLING_FIELDS = ("max_tokens", "soft_max_tokens", "temperature", "top_p", "top_k", "choices")

#: No vocabulary we know has a token longer than this (SmolLM2: 81 bytes, Gemma 3: 48).
MAX_TOKEN_BYTES = 256
_PROMPT_FIELDS = ("persona", "text", "situation", "lead", "result")


def check_prompt_size(req: Request, limits: Limits) -> None:
    """Refuse a prompt text that cannot fit ``max_prompt_tokens`` before anyone tokenizes it.

    A text of more than MAX_TOKEN_BYTES x max_prompt_tokens characters needs more tokens than
    that; checking its length costs nothing, tokenizing a megabyte stalls the model for 0.3 s.
    (The exact count, which needs the model's tokenizer, is the admission step's.)
    """
    most = limits.max_prompt_tokens * MAX_TOKEN_BYTES
    for name in _PROMPT_FIELDS:
        value = getattr(req, name, None)
        if isinstance(value, str) and len(value) > most:
            raise TooLarge(f"field {name!r} of {len(value)} characters cannot fit "
                           f"max_prompt_tokens={limits.max_prompt_tokens}")


#: Tokens of situation and options that a choice decision's option tree has room for beyond the NPC's persona
#: and history: the option scorer's (``model.scoring.TREE_ROOM``; tests/test_scoring.py holds them equal).
OPTION_ROOM_TOKENS = 2048


def check_option_size(req: Request) -> None:
    """Refuse options whose words cannot fit an option tree before anyone tokenizes them.

    The words scored for a choice are its description, or the choice itself. All of them go into one
    tree, so together they are refused, as a prompt text is, over MAX_TOKEN_BYTES x OPTION_ROOM_TOKENS
    characters. (Options under it that still do not fit are the option scorer's to refuse, once tokenized.)
    """
    choices = getattr(req, "choices", None) or []
    descriptions = getattr(req, "descriptions", None) or {}
    n = sum(len(descriptions.get(c, c)) for c in choices)
    if n > OPTION_ROOM_TOKENS * MAX_TOKEN_BYTES:
        raise TooLarge(f"options of {n} characters together cannot fit the {OPTION_ROOM_TOKENS} tokens "
                       f"of situation and options one decision has room for")


#: Stop strings one line may have: each token of the line is checked against every one.
MAX_STOPS = 16


def check_stop_size(req: Request, limits: Limits) -> None:
    """Refuse more than MAX_STOPS stop strings, or one longer than any line can be (max_tokens tokens): it
    could never be matched, and each token of the line is checked against it."""
    stop = getattr(req, "stop", None) or []
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOPS:
        raise TooLarge(f"{len(stops)} stop strings exceed the {MAX_STOPS} a line may have")
    most = limits.max_tokens * MAX_TOKEN_BYTES
    for s in stops:
        if len(s) > most:
            raise TooLarge(f"a stop string of {len(s)} characters cannot be matched: a line is at most "
                           f"max_tokens={limits.max_tokens} tokens")


#: The budget's bounds, for the budget op and the --budget-* / --frame-ms flags alike: field -> (whether a
#: value is within them, what they are). Written so that NaN is outside every one of them.
_BUDGET_BOUNDS: dict[str, tuple[Callable[[float], bool], str]] = {
    "threads": (lambda v: v >= 0, ">= 0 (0 = the sidecar's own choice)"),
    "tokens_per_s": (lambda v: v >= 0, ">= 0 (0 = no cap)"),
    "share": (lambda v: 0.01 <= v <= 1, "from 0.01 to 1"),
    "frame_ms": (lambda v: 0 <= v <= 1000, "between 0 (no frame target) and 1000"),
}


def budget_out_of_bounds(fields: dict[str, Any]) -> tuple[str, str] | None:
    """The first of a budget's fields (those given) outside its bounds, with the bounds; None when all hold.

    One rule for the wire and the command line: a share of 0 would stop the engine for good, and requests
    without a deadline would wait forever; below 1 % a step of 60 ms would pause the engine for more than 6 s.
    """
    for name, (holds, bounds) in _BUDGET_BOUNDS.items():
        if name in fields and not holds(fields[name]):
            return name, bounds
    return None


def check_budget(fields: dict[str, Any]) -> None:
    """Range checks for the budget op (0 means no limit, as on the command line)."""
    wrong = budget_out_of_bounds(fields)
    if wrong is not None:
        raise BadRequest(f"field {wrong[0]!r} must be {wrong[1]}")


def check_examples(fields: dict[str, Any], limits: Limits) -> None:
    """An NPC's worked examples stay in its cached prefix: a handful, each a situation and a choice."""
    examples = fields.get("examples", [])
    if len(examples) > limits.max_examples:
        raise TooLarge(f"{len(examples)} examples exceed max_examples={limits.max_examples}")
    if any(not e["situation"].strip() or not e["choice"].strip() for e in examples):
        raise BadRequest("each of 'examples' needs a non-empty situation and choice")


def check_sampling(fields: dict[str, Any] | Request, limits: Limits) -> None:
    """Range checks shared by say and decide (of a request, or of its fields)."""
    if not isinstance(fields, dict):
        req = fields
        fields = {name: v for name in _SAMPLING_FIELDS if (v := getattr(req, name, None)) is not None}
    mt = fields.get("max_tokens")
    if mt is not None and not 1 <= mt <= limits.max_tokens:
        raise BadRequest(f"field 'max_tokens' must be between 1 and {limits.max_tokens}")
    soft = fields.get("soft_max_tokens")
    if soft is not None and not 1 <= soft <= limits.max_tokens:
        raise BadRequest(f"field 'soft_max_tokens' must be between 1 and {limits.max_tokens}")
    t = fields.get("temperature")
    if t is not None and not 0 <= t <= 10:
        raise BadRequest("field 'temperature' must be between 0 and 10")
    p = fields.get("top_p")
    if p is not None and not 0 < p <= 1:
        raise BadRequest("field 'top_p' must be in (0, 1]")
    k = fields.get("top_k")
    if k is not None and not 0 <= k <= 1 << 31:
        raise BadRequest("field 'top_k' must be between 0 (no limit) and 2**31")
    choices = fields.get("choices")
    if choices is not None and len(choices) > limits.max_choices:
        raise TooLarge(f"{len(choices)} choices exceed max_choices={limits.max_choices}")
