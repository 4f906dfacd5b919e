"""Each numba sampling kernel against the numpy version it replaces, on real vocabulary sizes, and the same
kernel compiled ahead of time as `npcai bundle` ships it (numba.pycc: no numba or LLVM at run time)."""

import importlib.util
import sys

import numpy as np
import pytest

from npcai.bundle.kernels import MODULE, compile_sampling
from npcai.model.sampling import NO_MASK, sample_token, sample_token_numpy


def _ahead_of_time():
    """The bundle's kernel, compiled once per session into a temporary folder."""
    import tempfile
    from pathlib import Path

    built = compile_sampling(Path(tempfile.mkdtemp(prefix="npcai-aot-")))
    spec = importlib.util.spec_from_file_location(MODULE, built)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.setdefault(MODULE, module)
    return module.sample_token


def sample_token_aot(*args):
    global _aot
    if "_aot" not in globals():
        _aot = _ahead_of_time()
    return _aot(*args)

VOCABS = {"smollm2": 49_152, "gemma3": 262_144}


def _case(vocab: int, masked: bool):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=vocab) * 3).astype(np.float32)
    if not masked:
        return logits, NO_MASK
    mask = np.zeros((vocab + 31) // 32, dtype=np.int32)
    allowed = rng.choice(vocab, size=vocab // 10, replace=False)
    np.bitwise_or.at(mask.view(np.uint32), allowed >> 5, (np.uint32(1) << (allowed & 31).astype(np.uint32)))
    return logits, mask


@pytest.mark.parametrize("vocab", VOCABS.values(), ids=VOCABS.keys())
@pytest.mark.parametrize("masked", [False, True], ids=["free", "masked"])
@pytest.mark.parametrize("impl", [sample_token, sample_token_aot, sample_token_numpy], ids=["numba", "aot", "numpy"])
def test_sample_top_k_top_p(benchmark, impl, vocab, masked):
    logits, mask = _case(vocab, masked)
    tok = benchmark(impl, logits, mask, 0.7, 40, 0.95, 0.37)
    assert tok == sample_token_numpy(logits, mask, 0.7, 40, 0.95, 0.37)


@pytest.mark.parametrize("vocab", VOCABS.values(), ids=VOCABS.keys())
@pytest.mark.parametrize("impl", [sample_token, sample_token_aot, sample_token_numpy], ids=["numba", "aot", "numpy"])
def test_greedy_masked(benchmark, impl, vocab):
    logits, mask = _case(vocab, True)
    tok = benchmark(impl, logits, mask, 0.0, 0, 1.0, 0.0)
    assert tok == sample_token_numpy(logits, mask, 0.0, 0, 1.0, 0.0)
