"""Keys a JSON answer would repeat: while a key is being written, the endings that would make it one its
object already has, and no other object's."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from npcai.model import penalties
from npcai.model.json_keys import KeyTracker


def endings(text: str) -> set[bytes]:
    keys = KeyTracker()
    keys.feed(text.encode())
    return set(keys.repeat_endings())


def test_a_key_being_written_may_not_end_as_one_its_object_has():
    assert endings('{"name": 1, "') == {b'name"'}
    assert endings('{"name": 1, "age": 2, "na') == {b'me"'}
    assert endings('{"name": 1, "name') == {b'"'}
    assert endings('{"name": 1, "x') == set()


def test_only_the_keys_of_the_object_being_written_count():
    assert endings('{"a": {"b": 1, "') == {b'b"'}
    assert endings('{"a": {"b": 1}, "') == {b'a"'}
    assert endings('[{"a": 1}, {"') == set()
    assert endings('{"a": [{"b": 1}], "') == {b'a"'}


def test_a_value_is_not_a_key_and_strings_hide_their_punctuation():
    assert endings('{"a": "') == set()  # the value after the colon
    assert endings('{"a": "x, {\\"y\\": [", "') == {b'a"'}
    assert endings('{"a\\"b": 1, "') == {b'a\\"b"'}  # raw bytes, escapes and all


def test_a_token_that_writes_a_whole_key_is_seen_to_repeat_it():
    """One token can open and close a key ("}"), or end a value and write the next key whole (", "name"):
    a repeat the key being written never showed."""
    keys = KeyTracker()
    keys.feed(b'{"name": "Bo", "}": 1')
    assert keys.keys_here() == {b"name", b"}"}
    assert keys.would_repeat(b', "}"') and keys.would_repeat(b', "name"')
    assert not keys.would_repeat(b', "age"') and not keys.would_repeat(b'}')
    keys.feed(b', "tags": ["name", "')  # strings in an array are no keys
    assert keys.keys_here() == set() and not keys.would_repeat(b'name"')
    assert not keys.repeated  # probing writes nothing


def test_it_counts_the_quotes_that_open_or_close_strings_and_knows_when_one_is_open():
    keys = KeyTracker()
    assert keys.feed(b'{"a": "x\\"') == 3 and keys.in_string  # the escaped quote is the string's
    assert keys.feed(b'y", "') == 2 and keys.in_string
    assert keys.feed(b'b"') == 1 and not keys.in_string


def test_nothing_is_matched_right_after_a_backslash():
    assert endings('{"a": 1, "\\') == set()


@st.composite
def objects(draw):
    key = st.text(alphabet="abc\"\\{}[],: ", min_size=1, max_size=4)
    leaf = st.one_of(st.integers(-5, 5), st.text(alphabet='ab"\\{}[],: ', max_size=4), st.none())
    value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(key, inner, max_size=3)), max_leaves=8)
    return draw(st.dictionaries(key, value, min_size=1, max_size=4))


@given(objects(), st.data())
def test_a_text_fed_in_any_pieces_tracks_as_when_fed_whole(obj, data):
    """Tokens split a text anywhere, escapes and multi-byte characters included."""
    text = json.dumps(obj, ensure_ascii=False).encode()
    text = text[:-1] + b', "'  # a new key begins in the outer object
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    keys = KeyTracker()
    for a, b in zip([0, *cuts], [*cuts, len(text)]):
        keys.feed(text[a:b])
    expected = {json.dumps(k, ensure_ascii=False).encode()[1:] for k in obj}
    assert set(keys.repeat_endings()) == expected


def test_forbid_each_clears_the_given_tokens_unless_none_would_be_left():
    mask = penalties.token_mask(96, [0, 31, 32, 63, 95])
    penalties.forbid_each(mask, [31, 63])
    bits = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little"))
    assert bits.tolist() == [0, 32, 95]
    only = penalties.token_mask(96, [31])
    penalties.forbid_each(only, [31])  # the grammar's only way on stays
    assert np.flatnonzero(np.unpackbits(only.view(np.uint8), bitorder="little")).tolist() == [31]
