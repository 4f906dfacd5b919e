"""A relay (a chain, an action decision) hears its sub-requests' replies until it drops them.

The engine here is a stand-in that only records what the relay sends it: what is specified is the
relay's bookkeeping, which must not depend on when the engine gets round to a cancel."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from npcai import protocol as P
from npcai.model.choices import PRIOR_WEIGHT
from npcai.sidecar.action_options import ARGS_PRIOR_WEIGHT
from npcai.sidecar.actions import ActionDecision
from npcai.sidecar.relay import Relay


class _Engine:
    """Records the sub-requests a relay sends, and the cancels."""

    def __init__(self) -> None:
        self.sent: list[tuple[P.Request, Any]] = []
        self.cancelled: list[P.Request] = []

    def dispatch(self, req: P.Request, emit, npc=None) -> None:
        self.sent.append((req, emit))

    def cancel(self, req: P.Request, *, expired: bool = False) -> None:
        self.cancelled.append(req)


class _Probe(Relay):
    def start(self) -> None:
        pass


def _relay() -> tuple[_Probe, _Engine, list[dict]]:
    engine, out = _Engine(), []
    req = P.parse_request({"v": P.VERSION, "id": 7, "op": "chain", "steps": [
        {"op": "decide", "as": "a", "situation": "x", "choices": ["y", "z"]}]})
    return _Probe(req, None, out.append, 0, engine), engine, out


def _done(value: str) -> dict:
    return P.done(7, value=value, text=value, tokens=1, finish_reason="stop", timed_out=False, used_fallback=False,
                  usage={"prompt_tokens": 3, "cached_tokens": 0, "evaluated_tokens": 3, "steps": 1})


def test_a_reply_that_was_on_its_way_when_its_sub_request_was_dropped_is_not_heard():
    """A chain step past its share is dropped and the next step spawned; the engine learns of the cancel on
    its next turn, so the dropped step's own answer can still come, and was taken for the next step's."""
    relay, engine, _ = _relay()
    heard: list[tuple[str, Any]] = []
    first = relay.spawn("decide", {"situation": "x", "choices": ["y", "z"]}, lambda r: heard.append(("first", r)))
    relay.drop(first)
    relay.spawn("decide", {"situation": "x", "choices": ["u", "w"]}, lambda r: heard.append(("second", r)))
    (_, first_emit), (_, second_emit) = engine.sent
    assert engine.cancelled == [first]

    first_emit(_done("y"))  # the dropped request's answer, made before the engine saw its cancel
    assert heard == []
    second_emit(_done("u"))
    assert [(who, r["value"]) for who, r in heard] == [("second", "u")]


def test_a_dropped_sub_request_still_counts_the_tokens_it_fed_the_model():
    relay, engine, _ = _relay()
    sub = relay.spawn("decide", {"situation": "x", "choices": ["y", "z"]}, lambda r: None)
    relay.drop(sub)
    engine.sent[0][1](_done("y"))
    assert relay.usage["evaluated_tokens"] == 3


def test_an_action_decision_scores_its_arguments_with_their_own_prior_weights():
    """The sub-decision of an action decision carries, per option, how much prior comes off (more for
    argument combinations); no client can set that, since it is not on the wire."""
    engine = _Engine()
    item = {"type": "object", "properties": {"item": {"enum": ["sword", "shield"]}}, "required": ["item"]}
    npc = SimpleNamespace(id="smith", rng=np.random.default_rng(0), actions={
        "sell": {"name": "sell", "description": "sell the item", "args": item},
        "refuse": {"name": "refuse", "description": "refuse", "args": {"type": "object", "properties": {}}}})
    req = P.parse_request({"v": P.VERSION, "id": 7, "op": "decide", "npc": "smith", "situation": "x",
                           "actions": True})
    ActionDecision(req, None, [].append, 0, engine, npc, ["sell", "refuse"]).start()
    (sub, _), = engine.sent
    assert sub.choices == ["sell", "sell#0", "sell#1", "refuse"]
    assert sub.prior_weights == (PRIOR_WEIGHT, ARGS_PRIOR_WEIGHT, ARGS_PRIOR_WEIGHT, PRIOR_WEIGHT)
    forged = P.parse_request({"v": P.VERSION, "id": 8, "op": "decide", "situation": "x", "choices": ["a", "b"],
                              "prior_weights": [9.0, 9.0]})
    assert forged.prior_weights is None
