"""Action options: every (action, arguments) pair of a small argument space, scored as one choice.

Deciding an action as a choice over its names and then its arguments as a schema decision costs
two model steps and a second evaluation of the situation (1.7-2x a choice decision, measured in
docs/PERFORMANCE.md). When an action's arguments are few enumerable values (enums of in-game ids,
booleans, a small integer range), each combination is an option of its own ("give the customer
what they paid for: shield"), so one option tree scores the action and its arguments in one step.
The arguments are short words after a colon, not JSON-ish text: the combinations share the
description and the colon, and each adds only its values' tokens (SmolLM2, a development set of 24
situations: action and arguments right 11 times against 9 as "(item: shield)"; 13 option tokens in the
step instead of 22 for three actions, two with arguments; docs/PERFORMANCE.md).

Every enumerated argument map is valid against its schema by construction: only a subset of
JSON schema whose every instance can be listed is enumerated (``enumerate_args``); anything else
(strings, open numbers, big enums, other keywords) leaves the action to the two-step way.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from npcai.model import choices

#: Argument combinations one action may enumerate; past it, its arguments are a schema decision.
MAX_ARG_COMBOS = 12
#: Options one decision may score (all actions' combinations together); actions past it are scored
#: by their description alone and their arguments decided after.
MAX_OPTIONS = 24
#: How much of its content-free prior comes off a combination's score. Combinations are compared only
#: with the other combinations of their action, where the prior is the model's liking for a value
#: whatever happens ("sword" first after "sell the item:"), so more of it comes off than off a choice's
#: options (``choices.PRIOR_WEIGHT``). Chosen on bench/action_words.py's and bench/action_lines.py's
#: development items, the right action imposed: arguments right 52 of 66 against 43 at 0.25 (SmolLM2),
#: 47 against 38 (Gemma); docs/QUALITY.md, "Action arguments against their prior".
ARGS_PRIOR_WEIGHT = 0.75
#: Values an integer range may enumerate.
_MAX_RANGE = MAX_ARG_COMBOS
_ANNOTATIONS = {"title", "description", "default", "examples", "$comment"}
_OBJECT_KEYS = {"type", "properties", "required", "additionalProperties", "$schema"} | _ANNOTATIONS
_PROPERTY_KEYS = {"type", "enum", "const", "minimum", "maximum"} | _ANNOTATIONS
_JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
               "null": (type(None),), "object": (dict,), "array": (list,)}


@dataclass(frozen=True)
class Option:
    """One scored option of an action decision.

    An action's own option (``combo`` False) is its description: the options' probabilities, renormalized
    over these alone, are the actions' ``probs``, as a choice over the names would give them. A combination
    (``combo`` True) is the description followed by the arguments, so comparing the combinations of one
    action compares its arguments given that action. ``args`` None: decided after, by a schema decision."""

    key: str  # the choice's id: unique within a decision (an action name cannot hold '#')
    name: str
    args: dict[str, Any] | None
    words: str
    combo: bool = False


def enumerate_args(schema: dict[str, Any], limit: int = MAX_ARG_COMBOS) -> list[dict[str, Any]] | None:
    """Every argument map ``schema`` allows, in declaration order, or None when they cannot all be
    listed (a keyword outside the enumerable subset, an open type) or number more than ``limit``."""
    if set(schema) - _OBJECT_KEYS or schema.get("type", "object") != "object":
        return None
    props = schema.get("properties") or {}
    required = schema.get("required") or []
    if not isinstance(props, dict) or any(r not in props for r in required):
        return None
    domains: list[list[Any]] = []
    for prop in props.values():
        values = _values(prop) if isinstance(prop, dict) else None
        if not values:
            return None
        domains.append(values)
    size = 1
    for d in domains:
        size *= len(d)
    if size > limit:
        return None
    return [dict(zip(props, combo)) for combo in itertools.product(*domains)]


def _values(prop: dict[str, Any]) -> list[Any] | None:
    """Every value a property schema allows, or None when that is not a short, certain list."""
    if set(prop) - _PROPERTY_KEYS:
        return None
    kind = prop.get("type")
    if kind is not None and kind not in _JSON_TYPES:
        return None  # a list of types, or no JSON type at all
    if "const" in prop or "enum" in prop:
        if ({"minimum", "maximum"} & set(prop)) or ("const" in prop and "enum" in prop):
            return None
        listed = [prop["const"]] if "const" in prop else prop["enum"]
        if not isinstance(listed, list):
            return None
        out: list[Any] = []
        for v in listed:
            if (kind is None or _is_type(v, kind)) and not any(_same(v, w) for w in out):
                out.append(v)
        return out
    if kind == "boolean" and not {"minimum", "maximum"} & set(prop):
        return [True, False]
    if kind == "null":
        return [None]
    if kind == "integer":
        lo, hi = prop.get("minimum"), prop.get("maximum")
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in (lo, hi)) or hi < lo:
            return None
        return list(range(lo, hi + 1)) if hi - lo < _MAX_RANGE else None
    return None


def _is_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES[kind])


def _same(a: Any, b: Any) -> bool:
    """JSON equality (True is not 1)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def describe_args(args: dict[str, Any]) -> str:
    """Arguments as the words that follow an action's description: ": iron shield, count 2, urgent".
    Ids read with ``_`` as spaces; a value is its words, a number its name and value, a boolean its name
    or "not" and its name. The name comes first so that the combinations share it and differ last."""
    parts = [_arg_words(k, v) for k, v in args.items()]
    return f": {', '.join(parts)}" if parts else ""


def _arg_words(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return _word(key) if value else f"not {_word(key)}"
    if isinstance(value, (int, float)):
        return f"{_word(key)} {_value_words(value)}"
    return _value_words(value)


def _word(text: str) -> str:
    return text.replace("_", " ").strip()


def _value_words(value: Any) -> str:
    if value is None:
        return "none"
    return _word(value) if isinstance(value, str) else json.dumps(value)


def options(actions: list[dict[str, Any]], words: dict[str, str]) -> list[Option]:
    """The options of one decision over ``actions`` (each ``{name, args}``; ``words``: what each is
    scored as). Each action has its own option (not when it is the only one: its probability is 1) and,
    when its arguments are more than one combination of at most ``MAX_ARG_COMBOS``, one option per
    combination, while all of them fit ``MAX_OPTIONS``; an action whose combinations do not fit keeps
    its own option alone, its arguments decided after (``args`` None)."""
    listed = {a["name"]: enumerate_args(a["args"]) for a in actions}
    alone = len(actions) == 1
    room = MAX_OPTIONS - (0 if alone else len(actions))
    out: list[Option] = []
    for a in actions:
        name, combos = a["name"], listed[a["name"]]
        fixed = combos[0] if combos is not None and len(combos) == 1 else None
        if combos is not None and len(combos) > 1 and len(combos) <= room:
            room -= len(combos)
        elif combos is not None and len(combos) > 1:
            combos = None
        if not alone or not combos or len(combos) == 1:
            out.append(Option(name, name, fixed, words[name]))
        if combos is not None and len(combos) > 1:
            out.extend(Option(f"{name}#{i}", name, args, words[name] + describe_args(args), combo=True)
                       for i, args in enumerate(combos))
    return out


def prior_weights(opts: list[Option]) -> tuple[float, ...]:
    """How much of each option's prior comes off its score: ``ARGS_PRIOR_WEIGHT`` for a combination, the
    choices' own weight for an action's own option (the actions' ``probs`` keep a choice's meaning)."""
    return tuple(ARGS_PRIOR_WEIGHT if o.combo else choices.PRIOR_WEIGHT for o in opts)


def pick(opts: list[Option], probs: dict[str, float], temperature: float, rng: np.random.Generator, *,
         top_k: int = 0, top_p: float = 1.0) -> tuple[str, dict[str, Any] | None, dict[str, float]]:
    """(action name, its arguments or None when still to decide, each action's probability) from the
    options' calibrated ``probs``: the action from its own options' probabilities, then the arguments
    among that action's combinations; at temperature 0 the likeliest, else sampled (``choices.pick``),
    both times."""
    own = [o for o in opts if not o.combo]
    if own:
        total = sum(probs[o.key] for o in own)
        names = {o.name: probs[o.key] / total for o in own}
    else:  # one action, scored by its combinations alone
        names = {opts[0].name: 1.0}
    name = _draw(list(names), np.array(list(names.values())), temperature, top_k, top_p, rng)
    combos = [o for o in opts if o.combo and o.name == name]
    if not combos:
        return name, next(o.args for o in own if o.name == name), names
    key = _draw([o.key for o in combos], np.array([probs[o.key] for o in combos]), temperature, top_k, top_p,
                rng)
    return name, next(o.args for o in combos if o.key == key), names


def _draw(keys: list[str], p: np.ndarray, temperature: float, top_k: int, top_p: float,
          rng: np.random.Generator) -> str:
    if temperature <= 0 or len(keys) == 1:
        return keys[int(np.argmax(p))]
    return keys[choices.pick(p, temperature, top_k, top_p, rng.random())]
