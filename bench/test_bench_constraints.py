"""Constraint engines side by side on the models' real vocabularies: llguidance vs outlines-core.

Per-token cost is what a decision pays at every step: producing the allowed-token bitmask
the sampler reads. Compile cost is paid once per schema (both are cached by npcai).
"""

import json

import numpy as np
import pytest
from llguidance import LLMatcher
from llguidance.llamacpp import lltokenizer_from_vocab

SCHEMA = {"type": "object", "properties": {"action": {"enum": ["arrest", "follow", "raise_alarm", "ignore"]},
                                           "target": {"enum": ["stranger", "player", "none"]},
                                           "say": {"type": "string", "maxLength": 40}},
          "required": ["action", "target", "say"], "additionalProperties": False}
PREFIX = '{"action": "arrest", "target": "stranger", "say": "Halt'  # inside the free-text field: many tokens allowed


@pytest.fixture(scope="module")
def engines(model):
    outlines_core = pytest.importorskip("outlines_core")
    from outlines_core.json_schema import build_regex_from_schema

    tokenizer = lltokenizer_from_vocab(model.vocab, n_vocab=model.n_vocab)
    grammar = LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA), defaults={
        "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
    pieces: dict[bytes, list[int]] = {}
    for i in range(model.n_vocab):
        if not model.is_eog(i) and model.piece(i):
            pieces.setdefault(model.piece(i), []).append(i)
    vocab = outlines_core.Vocabulary(model.eos, pieces)
    regex = build_regex_from_schema(json.dumps(SCHEMA), r"[ ]?")  # admits the ", " and ": " llguidance emits
    return {"model": model, "tokenizer": tokenizer, "grammar": grammar, "vocab": vocab, "regex": regex,
            "Index": outlines_core.Index}


def _walk_llg(e):
    m = LLMatcher(e["tokenizer"], e["grammar"])
    toks = e["model"].tokenize(PREFIX, special=False)
    assert m.consume_tokens(toks), m.get_error()
    return m


def _walk_outlines(e, index):
    state = index.get_initial_state()
    for t in e["model"].tokenize(PREFIX, special=False):
        state = index.get_next_state(state, t)
        assert state is not None
    return state


def test_compile_llguidance(benchmark, engines):
    m = benchmark(LLMatcher, engines["tokenizer"], engines["grammar"])
    assert not m.is_error()


def test_compile_outlines_core(benchmark, engines):
    index = benchmark.pedantic(engines["Index"], args=(engines["regex"], engines["vocab"]), rounds=3, iterations=1)
    assert index.get_initial_state() is not None


def test_mask_llguidance(benchmark, engines):
    mask = np.zeros((engines["model"].n_vocab + 31) // 32, dtype=np.int32)

    def fresh():  # a new matcher each round, so no mask is served from a cache of the last call
        return (_walk_llg(engines),), {}

    benchmark.pedantic(lambda m: m.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes), setup=fresh,
                       rounds=200)
    assert np.unpackbits(mask.view(np.uint8)).sum() > 100


def test_mask_outlines_core(benchmark, engines):
    index = engines["Index"](engines["regex"], engines["vocab"])
    state = _walk_outlines(engines, index)
    mask = np.zeros((engines["model"].n_vocab + 31) // 32, dtype=np.uint32)

    def fill():
        mask[:] = 0
        ids = np.asarray(index.get_allowed_tokens(state), dtype=np.int64)
        np.bitwise_or.at(mask, ids >> 5, np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))
        return len(ids)

    assert benchmark(fill) > 100
