"""The vocabulary's masks (digits, unescaped quotes, JSON closers): the same tokens as the per-piece
definitions in ``penalties`` on every token of a real vocabulary, and a cache on disk that is used for
the very model file it was made from and ignored (then rewritten) in every other case."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npcai.model import penalties, vocab_masks


def _by_definition(pieces: list[bytes], n_vocab: int) -> dict[str, np.ndarray]:
    """The masks as the guards define them, one piece at a time."""
    return {"digits": penalties.token_mask(n_vocab, [t for t, p in enumerate(pieces) if p.isdigit()]),
            "quotes": penalties.token_mask(n_vocab, [t for t, p in enumerate(pieces) if penalties.json_quotes(p)[0]]),
            "closers": penalties.token_mask(n_vocab, [t for t, p in enumerate(pieces) if penalties.json_closer(p)])}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name


@pytest.fixture(scope="module")
def truth(model):
    return _by_definition(model.all_pieces(), model.n_vocab)


@pytest.fixture
def cache(monkeypatch, tmp_path, model):
    """A cache dir of the test's own (the model was resolved before it is set), after a first start stored the
    masks in it: that one file."""
    monkeypatch.setenv("NPCAI_CACHE", str(tmp_path))
    vocab_masks.masks_for(model)
    [stored] = (tmp_path / "models" / "vocab-masks").iterdir()
    return stored


def test_every_token_of_a_real_vocabulary_gets_the_masks_of_the_per_piece_definitions(model, truth):
    masks = vocab_masks.classify(model.all_pieces(), model.n_vocab)
    _assert_same(masks, truth)
    assert all(masks[name].any() for name in vocab_masks.NAMES)  # each one names some tokens


pieces = st.lists(st.binary(max_size=6).map(lambda b: bytes(b"0]}\\\"a"[x % 6] for x in b)) | st.sampled_from(
    [b"", b"12", b'\\"', b'\\\\"', b"]]", b'a"']), max_size=40)


@given(pieces)
def test_any_pieces_get_the_masks_of_the_per_piece_definitions_across_slices(chosen):
    n_vocab = len(chosen) + 5  # a vocabulary may be longer than its pieces (padding tokens)
    with mock.patch.object(vocab_masks, "_SLICE", 7):  # pieces fall on both sides of a slice's edge
        _assert_same(vocab_masks.classify(chosen, n_vocab), _by_definition(chosen, n_vocab))


def test_the_masks_are_stored_then_read_back_instead_of_rescanned(model, truth, cache):
    assert cache.name.startswith(model.path.name)
    _assert_same(vocab_masks.masks_for(model), truth)
    with np.load(cache) as stored:  # the stored file, with one mask changed: a read must return the change
        fields = dict(stored)
    fields["digits"] = np.zeros_like(fields["digits"])
    np.savez(cache, **fields)
    assert not vocab_masks.masks_for(model)["digits"].any()


@pytest.mark.parametrize("field", ["format", "size", "mtime", "n_vocab"])
def test_masks_stored_for_another_file_or_format_are_ignored_and_replaced(model, truth, cache, field):
    with np.load(cache) as stored:
        fields = dict(stored)
    fields["key"][["format", "size", "mtime", "n_vocab"].index(field)] += 1
    fields["quotes"] = np.zeros_like(fields["quotes"])
    np.savez(cache, **fields)
    _assert_same(vocab_masks.masks_for(model), truth)
    with np.load(cache) as stored:  # rewritten for the current file
        _assert_same({name: stored[name] for name in vocab_masks.NAMES}, truth)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_cache_file_is_ignored_and_replaced(model, truth, cache, damage):
    whole = cache.read_bytes()
    cache.write_bytes({"garbage": b"not an npz file" * 10, "truncated": whole[:len(whole) // 2], "empty": b""}[damage])
    _assert_same(vocab_masks.masks_for(model), truth)
    with np.load(cache) as stored:
        _assert_same({name: stored[name] for name in vocab_masks.NAMES}, truth)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left behind


def test_a_cache_that_cannot_be_written_only_costs_a_scan(model, truth, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache dir would have to be under this file")
    monkeypatch.setenv("NPCAI_CACHE", str(blocker / "cache"))
    _assert_same(vocab_masks.masks_for(model), truth)
    _assert_same(vocab_masks.masks_for(model), truth)
