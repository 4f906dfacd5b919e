"""Default bounds on what a schema leaves open: they only ever narrow it (a value valid under the bounded
schema is valid under the schema as sent), a schema's own bound wins, and a string under a pattern keeps
room for the pattern's shortest match."""

from __future__ import annotations

import re

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from npcai.model.constraints import MAX_ITEMS, MAX_STRING_LENGTH, bounded

PATTERNS = ["^pkg:.+@.+", "^test|acceptance|production$", "^[a-z0-9_.-]+:[a-z0-9_.-]+", "^[A-Z]{3}$",
            "ab+c", "^(x|yy)*z$", "^$|(^(?:\\S+\\s+){0,19}\\S+$)", "\\d{40}"]


def test_a_pattern_string_is_bounded_past_its_shortest_match_only_when_asked():
    schema = {"type": "string", "pattern": "^pkg:.+@.+"}  # the shortest match, "pkg:a@b", is 7 long
    assert "maxLength" not in bounded(schema)
    assert bounded(schema, patterns=True)["maxLength"] == MAX_STRING_LENGTH + 7


def test_a_pattern_that_needs_more_than_the_default_keeps_room_for_it():
    assert bounded({"type": "string", "pattern": "\\d{40}"}, patterns=True)["maxLength"] == MAX_STRING_LENGTH + 40
    assert bounded({"type": "string", "pattern": "a", "minLength": 90}, patterns=True)["maxLength"] == 90


def test_a_pattern_python_cannot_read_is_left_unbounded():
    """ECMA-only syntax (a Unicode property): its shortest match is unknown, and a wrong bound could make
    the schema unsatisfiable."""
    assert "maxLength" not in bounded({"type": "string", "pattern": "\\p{L}+"}, patterns=True)


def test_a_schemas_own_bounds_win():
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 200},
        "tags": {"type": "array", "maxItems": 50}, "note": {"type": "string", "maxLength": 1000}}}
    assert bounded(schema, patterns=True) == schema


@given(st.sampled_from(PATTERNS), st.data())
def test_the_room_left_for_a_pattern_is_never_more_than_any_string_it_matches_needs(pattern, data):
    """The bound is MAX_STRING_LENGTH past a lower bound on every match's length: whatever string the
    pattern accepts, one of its matches fits, so the bounded schema is satisfiable where the original is."""
    room = bounded({"type": "string", "pattern": pattern}, patterns=True)["maxLength"] - MAX_STRING_LENGTH
    text = data.draw(st.from_regex(pattern))
    assert re.search(pattern, text) and room <= len(text)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**10, 10**10) | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.sampled_from("abc"), inner,
                                                                                max_size=3), max_leaves=12)
SCHEMAS = st.recursive(
    st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {},
                     {"enum": ["x", 3]}, *({"type": "string", "pattern": p} for p in PATTERNS)]),
    lambda inner: st.builds(lambda items: {"type": "array", "items": items}, inner)
    | st.builds(lambda props: {"type": "object", "properties": props}, st.dictionaries(st.sampled_from("abc"), inner,
                                                                                          max_size=3))
    | st.builds(lambda opts: {"anyOf": opts}, st.lists(inner, min_size=1, max_size=3)), max_leaves=8)


@settings(max_examples=300)
@given(SCHEMAS, JSON)
def test_a_value_valid_under_the_bounded_schema_is_valid_under_the_schema_as_sent(schema, value):
    if jsonschema.Draft7Validator(bounded(schema, patterns=True)).is_valid(value):
        assert jsonschema.Draft7Validator(schema).is_valid(value)


def test_open_values_get_the_default_bounds():
    schema = bounded({"type": "object", "properties": {"tags": {"type": "array"}, "gold": {"type": "integer"},
                                                       "say": {"type": "string"}}})
    assert schema["properties"]["tags"]["maxItems"] == MAX_ITEMS
    assert schema["properties"]["say"]["maxLength"] == MAX_STRING_LENGTH
    assert schema["properties"]["gold"]["maximum"] > 0 > schema["properties"]["gold"]["minimum"]


def test_values_under_a_draft_7_tuples_additional_items_are_bounded_too():
    """``items`` as a list with ``additionalItems`` (draft 7's tuple) is the older spelling of ``prefixItems`` with
    ``items``; its strings came out 68-148 characters where the newer spelling's stopped at 32."""
    schema = bounded({"type": "array", "items": [{"const": 1}], "additionalItems": {"type": "string"}})
    assert schema["additionalItems"]["maxLength"] == MAX_STRING_LENGTH
    assert schema["items"] == [{"const": 1}]
