"""Action options: small argument spaces are listed in full, every listed argument map is valid
against its schema, and the picked action's probability is its own option's, not its combinations'."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npcai.model import choices
from npcai.sidecar.action_options import (
    ARGS_PRIOR_WEIGHT,
    MAX_ARG_COMBOS,
    MAX_OPTIONS,
    describe_args,
    enumerate_args,
    options,
    pick,
    prior_weights,
)

_IDS = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
_PROPERTY = st.one_of(
    st.lists(st.one_of(_IDS, st.integers(-3, 3), st.booleans(), st.none()), min_size=1, max_size=5).map(
        lambda v: {"enum": v}),
    st.lists(_IDS, min_size=1, max_size=4).map(lambda v: {"type": "string", "enum": v}),
    st.one_of(_IDS, st.integers(0, 9)).map(lambda v: {"const": v}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.tuples(st.integers(-20, 20), st.integers(0, 15)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]}),
    st.integers(1, 12).map(lambda n: {"type": "string", "maxLength": n}),
    st.just({"type": "number", "minimum": 0, "maximum": 1}),
    st.just({"type": "integer", "minimum": 0}),
)
_SCHEMA = st.tuples(st.dictionaries(st.sampled_from(["item", "target", "count", "loud"]), _PROPERTY, max_size=3),
                    st.booleans(), st.booleans()).map(
    lambda t: {"type": "object", "properties": t[0], **({"required": sorted(t[0])} if t[1] else {}),
               **({"additionalProperties": False} if t[2] else {})})


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(_SCHEMA)
def test_every_listed_argument_map_is_valid_and_distinct(schema):
    listed = enumerate_args(schema)
    if listed is None:
        return
    assert 1 <= len(listed) <= MAX_ARG_COMBOS
    for args in listed:
        jsonschema.validate(args, schema)
    assert len({repr(sorted(a.items())) for a in listed}) == len(listed)


def test_small_argument_spaces_are_listed_and_open_ones_are_not():
    item = {"type": "object", "properties": {"item": {"enum": ["sword", "shield"]}, "urgent": {"type": "boolean"}},
            "required": ["item", "urgent"]}
    assert enumerate_args(item) == [{"item": "sword", "urgent": True}, {"item": "sword", "urgent": False},
                                    {"item": "shield", "urgent": True}, {"item": "shield", "urgent": False}]
    assert enumerate_args({"type": "object", "properties": {}}) == [{}]
    assert enumerate_args({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1,
                                                                   "maximum": 3}}}) == [{"n": 1}, {"n": 2}, {"n": 3}]
    for open_ended in ({"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "number", "minimum": 0,
                                                                                "maximum": 1},
                       {"enum": [f"id{i}" for i in range(MAX_ARG_COMBOS + 1)]}, {"type": "string", "pattern": "a"}):
        assert enumerate_args({"type": "object", "properties": {"x": open_ended}}) is None
    assert enumerate_args({"type": "object", "properties": {}, "required": ["x"]}) is None
    assert enumerate_args({"type": "object", "properties": {"x": {"enum": [1]}}, "minProperties": 2}) is None


SELL = {"name": "sell", "args": {"type": "object", "properties": {"item": {"enum": ["sword", "shield"]}}}}
REFUSE = {"name": "refuse", "args": {"type": "object", "properties": {}}}
NOTE = {"name": "note", "args": {"type": "object", "properties": {"text": {"type": "string"}}}}
WORDS = {"sell": "sell an item", "refuse": "refuse the deal", "note": "write a note"}


def test_each_action_has_its_own_option_and_small_ones_their_combinations():
    opts = options([SELL, REFUSE, NOTE], WORDS)
    assert [(o.key, o.args, o.combo) for o in opts] == [
        ("sell", None, False), ("sell#0", {"item": "sword"}, True), ("sell#1", {"item": "shield"}, True),
        ("refuse", {}, False), ("note", None, False)]
    assert opts[1].words == "sell an item: sword"
    alone = options([SELL], WORDS)  # one action: only its arguments are in question
    assert [o.key for o in alone] == ["sell#0", "sell#1"]
    many = [{"name": f"a{i}", "args": SELL["args"]} for i in range(MAX_OPTIONS)]
    opts = options(many, {a["name"]: "x" for a in many})
    assert len(opts) <= MAX_OPTIONS and opts[-1].args is None  # past the room: arguments decided after


def test_arguments_read_as_short_words_after_the_description():
    """Words, not JSON: a value as itself, a number after its name, a boolean as its name or "not" it."""
    assert describe_args({"item": "iron_shield", "count": 2, "urgent": True}) == ": iron shield, count 2, urgent"
    assert describe_args({"loud": False, "target": None}) == ": not loud, none"
    assert describe_args({}) == ""


def test_the_action_is_picked_by_its_own_option_and_the_arguments_among_its_combinations():
    opts = options([SELL, REFUSE, NOTE], WORDS)
    # the combinations of sell outweigh refuse together, but the actions compare by their own options
    probs = {"sell": 0.2, "sell#0": 0.25, "sell#1": 0.15, "refuse": 0.3, "note": 0.1}
    name, args, names = pick(opts, probs, 0.0, np.random.default_rng(0))
    assert (name, args) == ("refuse", {}) and names == pytest.approx({"sell": 1 / 3, "refuse": 0.5, "note": 1 / 6})
    probs = {"sell": 0.5, "sell#0": 0.05, "sell#1": 0.15, "refuse": 0.2, "note": 0.1}
    assert pick(opts, probs, 0.0, np.random.default_rng(0))[:2] == ("sell", {"item": "shield"})
    probs = {"sell": 0.1, "sell#0": 0.05, "sell#1": 0.15, "refuse": 0.2, "note": 0.5}
    assert pick(opts, probs, 0.0, np.random.default_rng(0))[:2] == ("note", None)  # its schema decision follows
    seen = {pick(opts, {"sell": 0.4, "sell#0": 0.1, "sell#1": 0.1, "refuse": 0.3, "note": 0.1}, 1.0,
                 np.random.default_rng(seed))[0] for seed in range(50)}
    assert seen == {"sell", "refuse", "note"}


def test_arguments_are_weighed_against_more_of_their_prior_than_actions():
    """A value the model likes whatever happens ("sword", first after the colon) must not win by that alone:
    combinations take more of their content-free prior off than an action's own option, whose probability
    keeps a choice's meaning."""
    opts = options([SELL, REFUSE], WORDS)
    weights = prior_weights(opts)
    assert weights == (choices.PRIOR_WEIGHT, ARGS_PRIOR_WEIGHT, ARGS_PRIOR_WEIGHT, choices.PRIOR_WEIGHT)
    assert ARGS_PRIOR_WEIGHT > choices.PRIOR_WEIGHT
    # the situation raises the shield by 1.5 nats, but the model gives the sword 2 more whatever happens
    prior = np.array([-3.0, -2.0, -4.0, -3.0])
    loglik = prior + np.array([0.0, 0.0, 1.5, 0.0])
    both = choices.probabilities(loglik, prior, 1.0, weights=weights)
    probs = {o.key: float(p) for o, p in zip(opts, both)}
    assert pick(opts, probs, 0.0, np.random.default_rng(0))[1] == {"item": "shield"}
    alike = {o.key: float(p) for o, p in zip(opts, choices.probabilities(loglik, prior, 1.0))}
    assert pick(opts, alike, 0.0, np.random.default_rng(0))[1] == {"item": "sword"}  # what it was before
    assert pick(opts, probs, 0.0, np.random.default_rng(0))[2] == pytest.approx(
        pick(opts, alike, 0.0, np.random.default_rng(0))[2])  # the actions' probs are as a choice's
