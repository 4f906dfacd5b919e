"""Actions: what an NPC may do, declared with it, and chosen valid by construction.

An NPC declares its actions (``npc`` with ``actions``: name, description, and a JSON schema for the
arguments, typically enums of in-game ids). Every schema is compiled when the NPC is defined, so a bad
one is refused then, naming its action. An action is chosen by decisions that exist already:

1. which action: a choice decision over the allowed names, each scored by its description (the words
   that complete "I should ..."), so it gets calibrated ``probs`` like any choice;
   when an action's arguments are a few enumerable values, each combination is an option of that same
   decision (``action_options.py``) and the arguments come out of it too: one model step;
2. otherwise its arguments: a schema decision (constrained decoding, llguidance) over that action's
   ``args``, skipped when the action takes none.

Neither way can produce a name that is not allowed or arguments its schema refuses. After a line
(``say`` with ``actions``) the first decision also weighs doing nothing (``NO_ACTION``). ``act_result``
tells the NPC what came of it, as a turn of its history.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import numpy as np

from npcai import protocol as P
from npcai.errors import BadRequest, NpcaiError, TooLarge
from npcai.sidecar import action_options
from npcai.sidecar.relay import Relay, ended_badly

if TYPE_CHECKING:
    from npcai.model.runtime import Runtime
    from npcai.sidecar.npc import Npc

#: What an action's name may be: an identifier a game can map to a function (dots and dashes allowed).
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
#: The option "do nothing" after a line; no action name can be this.
NO_ACTION = "(none)"
NO_ACTION_WORDS = "just keep talking"
#: The question asked after a line, in the NPC's own chat, before the action is scored.
AFTER_LINE = "You have answered. What should you do now?"
_NO_ARGS = {"type": "object", "properties": {}}


def words(action: dict[str, Any]) -> str:
    """The words scored for an action: its description, else its name as words."""
    return (action.get("description") or "").strip() or action["name"].replace("_", " ").replace("-", " ")


def check_actions(raw: list[dict[str, Any]] | None, rt: "Runtime", limits: P.Limits) -> dict[str, dict[str, Any]]:
    """An NPC's actions by name, each with its ``args`` schema compiled; BadRequest or TooLarge names the
    action at fault. Compiling blocks the engine for at most the compiler's timeout; action schemas are
    small enums and compile in milliseconds, and each is cached by its text."""
    if not raw:
        return {}
    if len(raw) > limits.max_actions:
        raise BadRequest(f"action {raw[limits.max_actions]['name']!r} is one too many: an NPC declares at most "
                         f"max_actions={limits.max_actions}")
    out: dict[str, dict[str, Any]] = {}
    for action in raw:
        name = action["name"]
        if not NAME.match(name) or not any(c.isalnum() for c in name):  # '_' read as words is none
            raise BadRequest(f"action name {name!r} must be a letter or _ then letters, digits, _ . - (64 at most), "
                             f"with a letter or digit among them")
        if name in out:
            raise BadRequest(f"action {name!r} is declared twice")
        args = action.get("args") or _NO_ARGS
        if args.get("type", "object") != "object":
            raise BadRequest(f"action {name!r}: args must be an object schema (type object), not {args.get('type')!r}")
        try:
            kind, source = rt.compiler.source_for({"schema": args})
            rt.compiler.submit(kind, source).result(timeout=rt.compiler.compile_timeout)
        except NpcaiError as err:
            raise type(err)(f"action {name!r}: {err.message}") from None
        except FutureTimeout:
            raise TooLarge(f"action {name!r}: args schema took over {rt.compiler.compile_timeout:.1f} s "
                           f"to compile") from None
        out[name] = {"name": name, "description": action.get("description", ""), "args": args}
    return out


def allowed(npc: "Npc", pick: bool | list[str]) -> list[str]:
    """The action names a request allows: all of the NPC's (``true``) or those listed."""
    if pick is True:
        names = list(npc.actions)
    elif pick is False:
        return []
    else:
        names = list(dict.fromkeys(pick))
        unknown = [n for n in names if n not in npc.actions]
        if unknown:
            raise BadRequest(f"action {unknown[0]!r} is not one of NPC {npc.id!r}'s actions "
                             f"({', '.join(npc.actions) or 'it declares none'})")
    if not names:
        raise BadRequest(f"NPC {npc.id!r} declares no actions (give 'actions' in op 'npc')")
    return names


def choice_sets(npc: Npc) -> list[dict[str, Any]]:
    """The ``choices`` and ``descriptions`` of the NPC's two usual action decisions: over all its actions
    (``decide`` with ``actions: true``), and after a line, those or none (``say`` with ``actions: true``).
    Known when the NPC is defined, so their priors can be scored before its first action."""
    return [_choice_fields(decision_options(npc, names, extra))
            for names, extra in ((list(npc.actions), {}), ([NO_ACTION, *npc.actions], {NO_ACTION: NO_ACTION_WORDS}))]


def decision_options(npc: Npc, names: list[str], extra_words: dict[str, str]) -> list[action_options.Option]:
    """The options of a choice over ``names`` (with their argument combinations, when few); ``extra_words``:
    what names that are not the NPC's actions (``NO_ACTION``) are scored as. Also what an adapter is trained on
    (bench/train_decision_lora.py)."""
    descriptions = {n: words(npc.actions[n]) for n in names if n in npc.actions} | extra_words
    declared = [npc.actions.get(n) or {"name": n, "args": _NO_ARGS} for n in names]
    return action_options.options(declared, descriptions)


def _choice_fields(options: list[action_options.Option]) -> dict[str, Any]:
    return {"choices": [o.key for o in options], "descriptions": {o.key: o.words for o in options}}


def record_result(npc: "Npc", name: str, result: str) -> None:
    """``act_result``: what came of an action joins the NPC's history, so its next line can refer to it."""
    if name not in npc.actions:
        raise BadRequest(f"action {name!r} is not one of NPC {npc.id!r}'s actions")
    npc.messages.append(("user", f"(You {words(npc.actions[name])}: {result.strip()})"))


class _ActionRelay(Relay):
    """Which action and, when they are few, its arguments (one choice decision over ``action_options``);
    else its arguments after (a schema decision)."""

    def __init__(self, req, rt, emit, npc_ctx, engine, npc: "Npc", names: list[str]):
        super().__init__(req, rt, emit, npc_ctx, engine)
        self.npc, self.names = npc, names
        self.probs: dict[str, float] = {}
        self._name: str | None = None
        self._options: list[action_options.Option] = []
        self._tokens = 0  # generated by the decisions that made the answer: the pick's, then the arguments'
        seed = req.fields.get("seed")
        self._rng = np.random.default_rng(seed) if seed is not None else npc.rng

    def _common(self) -> dict[str, Any]:
        f = self.req.fields
        return {"npc": self.npc.id, **{k: f[k] for k in ("seed", "role") if k in f}}

    def _choose(self, situation: str, names: list[str], extra_words: dict[str, str]) -> None:
        f = self.req.fields
        self._options = decision_options(self.npc, names, extra_words)
        fields = {**self._common(), "situation": situation, **_choice_fields(self._options),
                  **{k: f[k] for k in ("lead",) if k in f and self.req.op == "decide"}}
        self.spawn("decide", fields, self._chosen,  # at temperature 0: the pick is made here, from its probs
                   internal={"prior_weights": action_options.prior_weights(self._options)})

    def _chosen(self, reply: dict[str, Any]) -> None:
        self._tokens = reply.get("tokens", 0)
        if ended_badly(reply) or reply["used_fallback"]:
            return self._fail(reply)
        f = self.req.fields if self.req.op == "decide" else {}  # a line's action is the likeliest
        name, args, self.probs = action_options.pick(self._options, reply["probs"], float(f.get("temperature", 0.0)),
                                                     self._rng, top_k=int(f.get("top_k", 0)),
                                                     top_p=float(f.get("top_p", 1.0)))
        if name == NO_ACTION:
            return self._acted(None)
        self._name = name
        action = self.npc.actions[name]
        if args is not None:
            return self._acted({"name": name, "args": args})
        fields = {**self._common(), "situation": self._args_situation(action), "schema": action["args"]}
        if "max_tokens" in self.req.fields and self.req.op == "decide":
            fields["max_tokens"] = self.req.fields["max_tokens"]
        self.spawn("decide", fields, self._argued)

    def _argued(self, reply: dict[str, Any]) -> None:
        self._tokens += reply.get("tokens", 0)
        if ended_badly(reply) or reply["used_fallback"]:
            return self._fail(reply)
        self._acted({"name": self._name, "args": reply["value"]})

    def _args_situation(self, action: dict[str, Any]) -> str:
        raise NotImplementedError

    def _acted(self, action: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def _fail(self, reply: dict[str, Any]) -> None:
        raise NotImplementedError


class ActionDecision(_ActionRelay):
    """``decide`` with ``actions``: ``value`` is ``{name, args}``, ``probs`` each allowed action's."""

    def start(self) -> None:
        self._choose(self.req.fields["situation"], self.names, {})

    def _args_situation(self, action: dict[str, Any]) -> str:
        return f"{self.req.fields['situation'].strip()}\n\nYou are going to {words(action)} ({action['name']})."

    def _acted(self, action: dict[str, Any] | None) -> None:
        self.finish(P.done(self.req.id, value=action, text=json.dumps(action), tokens=self._tokens,
                           finish_reason="stop", timed_out=False, used_fallback=False, probs=self.probs, timing=self.timing(),
                           usage=self.usage))

    def _fail(self, reply: dict[str, Any]) -> None:
        if ended_badly(reply):
            return self.finish({**reply, "id": self.req.id})
        self.finish({**reply, "value": self.req.fallback, "tokens": self._tokens,
                     "probs": self.probs, "timing": self.timing(), "usage": self.usage})


class ActionLine(_ActionRelay):
    """``say`` with ``actions``: the line streams as any line does; then the NPC may act, and ``done``
    carries ``action`` (nil, or ``{name, args}``)."""

    def __init__(self, req, rt, emit, npc_ctx, engine, npc, names):
        super().__init__(req, rt, emit, npc_ctx, engine, npc, names)
        self._line: dict[str, Any] | None = None

    def start(self) -> None:
        fields = {k: v for k, v in self.req.fields.items() if k != "actions"}
        self.spawn("say", fields, self._said)

    def _said(self, reply: dict[str, Any]) -> None:
        if reply["event"] != P.DONE:
            return self.emit(reply) if reply["event"] in (P.TOKEN, P.SENTENCE) else self.finish(reply)
        self._line = reply
        if reply["used_fallback"]:
            return self._acted(None)
        self._choose(AFTER_LINE, [NO_ACTION, *self.names], {NO_ACTION: NO_ACTION_WORDS})

    def _args_situation(self, action: dict[str, Any]) -> str:
        return f"You are going to {words(action)} ({action['name']})."

    def _acted(self, action: dict[str, Any] | None) -> None:
        line = self._line
        self.finish({**line, "action": action, "action_probs": self.probs,
                     "timing": {**line["timing"], "total_ms": self.timing()["total_ms"]}, "usage": self.usage})

    def _fail(self, reply: dict[str, Any]) -> None:
        self._acted(None)  # the line stands; the NPC just does not act
