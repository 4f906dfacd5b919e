"""The JSON string guard's notion of a quote: one that ends (or starts) a string, never an escaped one."""

from hypothesis import given
from hypothesis import strategies as st

from npcai.model.penalties import json_quotes


def test_a_plain_quote_ends_a_string():
    assert json_quotes(b'"') == (True, False)
    assert json_quotes(b'",') == (True, False)


def test_an_escaped_quote_stays_inside_the_string():
    assert json_quotes(b'\\"') == (False, False)
    assert json_quotes(b'abc\\"def') == (False, False)


def test_an_escaped_backslash_does_not_escape_the_quote_after_it():
    assert json_quotes(b'\\\\"') == (True, False)


def test_an_escape_may_span_two_tokens():
    quote, escaped = json_quotes(b"abc\\")
    assert (quote, escaped) == (False, True)
    assert json_quotes(b'"', escaped) == (False, False)


@given(st.text(alphabet='ab"\\', max_size=12), st.integers(min_value=0, max_value=12))
def test_split_anywhere_the_pieces_agree_with_the_whole(text, cut):
    whole = text.encode()
    cut = min(cut, len(whole))
    first, escaped = json_quotes(whole[:cut])
    second, end = json_quotes(whole[cut:], escaped)
    assert (first or second, end) == json_quotes(whole)
