"""The JSON string guard's notion of a quote: one that ends (or starts) a string, never an escaped one;
their parity says whether a JSON text ends inside a string, where the way out is a quote and not a
closing bracket."""

import json

from hypothesis import given
from hypothesis import strategies as st

from npcai.model.penalties import (
    json_closer,
    json_quote_count,
    json_quotes,
    json_string_end,
)


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


def _inside_string(pieces: list[bytes]) -> bool:
    """Whether the text of ``pieces`` ends inside a JSON string, by the parity of its quotes."""
    escaped, quotes = False, 0
    for piece in pieces:
        n, escaped = json_quote_count(piece, escaped)
        quotes += n
    return quotes % 2 == 1


def test_the_parity_of_quotes_says_whether_the_text_ends_inside_a_string():
    assert _inside_string([b'{"say": "'])
    assert not _inside_string([b'{"say": "hi"', b", "])
    assert _inside_string([b'{"say": "a \\', b'"b'])  # the quote after a backslash is part of the string


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet='a"\\}]{[', max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text('k"\\', max_size=3), inner,
                                                                                max_size=3)),
       st.data())
def test_cut_anywhere_a_json_text_is_inside_a_string_exactly_where_a_parser_says(value, data):
    """A JSON text cut into tokens: after any prefix, the parity says inside exactly when the prefix
    ends within a string, as a JSON parser sees it (the prefix plus a closing quote completes it)."""
    text = json.dumps(value)
    cut = data.draw(st.integers(0, len(text)))
    prefix = text[:cut].encode()
    pieces = [prefix[i:i + 3] for i in range(0, len(prefix), 3)]
    assert _inside_string(pieces) == _in_string_by_scan(text[:cut])


def _in_string_by_scan(prefix: str) -> bool:
    """The reference: walk the prefix as a JSON tokenizer does."""
    inside = escaped = False
    for ch in prefix:
        if inside and escaped:
            escaped = False
        elif inside and ch == "\\":
            escaped = True
        elif ch == '"':
            inside = not inside
    return inside


def test_a_closer_starts_by_closing_an_array_or_object():
    assert json_closer(b"]") and json_closer(b"}") and json_closer(b"}]}") and json_closer(b"},")
    assert not json_closer(b'"}') and not json_closer(b"a}") and not json_closer(b", ") and not json_closer(b"")


def test_the_way_out_of_a_string_ends_it_and_begins_nothing_more():
    assert all(json_string_end(p) for p in (b'"', b'"}', b'"]}', b'":', b' "}', b'\\\\"'))
    assert not any(json_string_end(p) for p in (b'", "', b'",', b'"]}, ', b'""', b'"""', b'a', b'", "a":'))
    assert not json_string_end(b'\\"')  # an escaped quote leaves the string open
