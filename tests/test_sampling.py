"""Sampling kernels: they agree with the plain numpy reference, never leave the mask, and draw the same
whether streams are sampled one by one or together."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npcai.model.sampling import (
    NO_MASK,
    sample_token,
    sample_token_numpy,
    sample_tokens,
)


def _mask(vocab: int, allowed) -> np.ndarray:
    mask = np.zeros((vocab + 31) // 32, dtype=np.int32)
    for t in allowed:
        mask.view(np.uint32)[t >> 5] |= np.uint32(1) << np.uint32(t & 31)
    return mask


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), vocab=st.integers(2, 3000), temperature=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
       top_k=st.sampled_from([0, 1, 5, 40]), top_p=st.sampled_from([0.3, 0.9, 1.0]), u=st.floats(0, 0.999999),
       masked=st.booleans())
def test_numba_kernel_draws_what_the_numpy_reference_draws(seed, vocab, temperature, top_k, top_p, u, masked):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=vocab) * 4).astype(np.float32)
    mask = _mask(vocab, rng.choice(vocab, size=max(1, vocab // 7), replace=False)) if masked else NO_MASK
    assert sample_token(logits, mask, temperature, top_k, top_p, u) == \
        sample_token_numpy(logits, mask, temperature, top_k, top_p, u)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), temperature=st.floats(0, 5), u=st.floats(0, 0.999999))
def test_a_draw_is_always_an_allowed_token(seed, temperature, u):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=1000) * 10).astype(np.float32)
    allowed = set(rng.choice(1000, size=3, replace=False).tolist())
    assert sample_token(logits, _mask(1000, allowed), temperature, 0, 1.0, u) in allowed


def test_nothing_allowed_gives_minus_one():
    logits = np.zeros(64, dtype=np.float32)
    assert sample_token(logits, np.zeros(2, dtype=np.int32), 0.7, 40, 0.9, 0.5) == -1


@pytest.mark.parametrize("streams,vocab", [(1, 262_144), (3, 262_144), (4, 262_144), (16, 262_144), (16, 49_152)])
def test_many_streams_sampled_together_draw_what_each_draws_alone(streams, vocab):
    rng = np.random.default_rng(streams)
    draws = [(rng.normal(size=vocab).astype(np.float32) * 3, 0.8, 40, 0.95, float(rng.random()))
             for _ in range(streams)]
    alone = [int(sample_token(logits, NO_MASK, t, k, p, u)) for logits, t, k, p, u in draws]
    assert sample_tokens(draws) == alone
