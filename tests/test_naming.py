"""Where an NPC says who it is, it says its persona's name (``npcai/model/naming.py``)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from npcai.model.naming import NameGuard
from npcai.model.native import Model


def _token(model: Model, text: str) -> int:
    (tok,) = model.tokenize(text, add_bos=False, special=False)
    return tok


def _logits(model: Model, favoured: dict[str, float]) -> np.ndarray:
    logits = np.zeros(model.n_vocab, dtype=np.float32)
    for text, value in favoured.items():
        logits[_token(model, text)] = value
    return logits


def _probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits / temperature
    p = np.exp(scaled - scaled.max())
    return p / p.sum()


def test_another_name_after_a_self_introduction_gives_its_probability_to_the_persona_name(model):
    guard = NameGuard(model, "Brom")
    logits = _logits(model, {" Grim": 9.0, " Thor": 8.0, " sorry": 8.5, " Brom": 6.0})
    before = _probs(logits, 0.7)
    guard.adjust(logits, "Well met. I am", 0.7)
    after = _probs(logits, 0.7)
    grim, thor, sorry, brom = (_token(model, t) for t in (" Grim", " Thor", " sorry", " Brom"))
    assert after[grim] == 0 and after[thor] == 0
    assert after[brom] == pytest.approx(before[grim] + before[thor] + before[brom], rel=1e-4)
    assert after[sorry] == pytest.approx(before[sorry], rel=1e-4), "a lower-case continuation keeps its chance"


def test_a_line_that_introduces_nobody_is_left_alone(model):
    guard = NameGuard(model, "Brom")
    logits = _logits(model, {" Grim": 9.0, " Brom": 6.0})
    untouched = logits.copy()
    guard.adjust(logits, "The mountain called Grim", 0.7)
    assert np.array_equal(logits, untouched)


def test_a_name_of_several_tokens_is_said_whole_once_it_starts(model):
    guard = NameGuard(model, "Sister Maren")
    sister, m, aren = model.tokenize(" Sister Maren", add_bos=False, special=False)
    logits = _logits(model, {" Grim": 9.0})
    guard.adjust(logits, "my name is", 0.7)
    assert int(np.argmax(logits)) == sister
    guard.observe(sister)
    for expected in (m, aren):
        logits = _logits(model, {" Grim": 9.0, " sorry": 9.0})
        guard.adjust(logits, "", 0.7)
        assert int(np.argmax(logits)) == expected and np.isinf(logits[_token(model, " Grim")])
        guard.observe(expected)
    logits = _logits(model, {" Grim": 9.0})
    guard.adjust(logits, "my name is Sister Maren", 0.7)
    assert int(np.argmax(logits)) == _token(model, " Grim"), "after the name, the line is the model's again"


def test_the_name_is_said_as_a_word_of_its_own(model):
    """SmolLM2 once went on from the forced name: "I'm Molla". After the name, tokens that would lengthen
    its word lose their chance; a space, punctuation or anything else keeps the model's."""
    guard = NameGuard(model, "Moll")
    (moll,) = model.tokenize(" Moll", add_bos=False, special=False)
    logits = _logits(model, {" Grim": 9.0})
    guard.adjust(logits, "Greetings. I'm", 0.7)
    guard.observe(moll)
    logits = _logits(model, {"a": 9.0, "y": 8.0, ",": 8.5, " the": 7.0})
    before = _probs(logits, 0.7)
    guard.adjust(logits, "Greetings. I'm Moll", 0.7)
    after = _probs(logits, 0.7)
    assert after[_token(model, "a")] == 0 and after[_token(model, "y")] == 0
    comma, the = _token(model, ","), _token(model, " the")
    assert after[comma] / after[the] == pytest.approx(before[comma] / before[the], rel=1e-4)
    logits = _logits(model, {"a": 9.0})
    guard.adjust(logits, "Greetings. I'm Moll, the", 0.7)
    assert int(np.argmax(logits)) == _token(model, "a"), "only the token right after the name"


def test_a_self_introduction_that_goes_another_way_frees_the_line(model):
    guard = NameGuard(model, "Sister Maren")
    logits = _logits(model, {" sorry": 9.0})
    guard.adjust(logits, "I am", 0.7)
    guard.observe(_token(model, " sorry"))
    logits = _logits(model, {" Grim": 9.0})
    guard.adjust(logits, "I am sorry, friend. The hill is named", 0.7)
    assert int(np.argmax(logits)) == _token(model, " Grim")


INTRODUCTION = re.compile(r"\b(?i:I am|I'm|my name is|the name is|call me) ([A-Z][\w'-]*)")


def test_npcs_asked_who_they_are_introduce_themselves_by_their_persona_names(client):
    """SmolLM2 without the rule: 14 of 66 such introductions used the persona's name (bench/name_keeping.py)."""
    introductions = []
    for i, (name, persona) in enumerate([("Jack", "You are Jack Mallow, a sailor who sings sea shanties."),
                                         ("Moll", "You are Moll, the ruthless leader of a bandit gang."),
                                         ("Hilda", "You are Hilda, a stern town guard of Oakvale.")]):
        for j, question in enumerate(("What is your name?", "Who are you?", "Introduce yourself, stranger.") * 2):
            client.npc(f"intro-{i}-{j}", persona, seed=100 + 6 * i + j)
            text = client.say(f"intro-{i}-{j}", question, max_tokens=24)["text"]
            introductions += [(name, m.group(1), text) for m in INTRODUCTION.finditer(text)]
    assert len(introductions) >= 3, introductions
    assert all(said == name for name, said, _ in introductions), introductions
