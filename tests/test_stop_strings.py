"""Stop strings: a line ends before the first one it writes, and no part of one is ever streamed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npcai import protocol as P
from npcai.errors import TooLarge
from npcai.model.lines import StopStrings
from npcai.protocol.checks import MAX_STOPS


def _stream(pieces: list[str], stops: StopStrings) -> tuple[str, list[str]]:
    """What a say streams (chunks) and ends with (text), fed a token's text at a time."""
    text, sent, chunks = "", 0, []
    for piece in pieces:
        text += piece
        at = stops.find(text, sent)
        if at >= 0:
            return text[:at], chunks + ([text[sent:at]] if at > sent else [])
        end = stops.safe_end(text, sent)
        if end > sent:
            chunks.append(text[sent:end])
            sent = end
    return text, chunks + ([text[sent:]] if len(text) > sent else [])


def _by_rescanning_everything(pieces: list[str], stops: list[str]) -> str:
    """The same line, found the slow way: after each token the whole text is searched for every stop string."""
    text = ""
    for piece in pieces:
        text += piece
        found = [at for s in stops if s and (at := text.find(s)) >= 0]
        if found:
            return text[:min(found)]
    return text


_letters = st.text(alphabet="ab .", max_size=4)


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(_letters, max_size=14), stops=st.lists(st.text(alphabet="ab .", min_size=1, max_size=5),
                                                              max_size=4))
def test_a_line_ends_before_the_first_stop_string_it_completes_and_streams_no_part_of_one(pieces, stops):
    text, chunks = _stream(pieces, StopStrings(stops))
    assert text == _by_rescanning_everything(pieces, stops)
    assert "".join(chunks) == text
    streamed = ""
    for chunk in chunks:  # at no point did what had gone out hold a whole stop string
        streamed += chunk
        assert not any(s in streamed for s in stops)


def test_text_that_might_begin_a_stop_string_is_held_back_until_it_does_not():
    stops = StopStrings(["Player:", "\n\n"])
    assert stops.safe_end("Aye. Pla", 0) == len("Aye. ")
    assert stops.safe_end("Aye. Plan", 0) == len("Aye. Plan")
    assert stops.safe_end("Aye.\n", 3) == len("Aye.")


def test_more_stop_strings_than_a_line_may_have_are_refused():
    fields = {"v": 1, "id": 1, "op": "say", "npc": "a", "text": "x"}
    P.parse_request({**fields, "stop": [f"s{i}" for i in range(MAX_STOPS)]})
    with pytest.raises(TooLarge, match=f"{MAX_STOPS + 1} stop strings exceed the {MAX_STOPS} a line may have"):
        P.parse_request({**fields, "stop": [f"s{i}" for i in range(MAX_STOPS + 1)]})
