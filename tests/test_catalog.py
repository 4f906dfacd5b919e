"""The default model runs from a conversion of its verified file to weights with fast CPU
kernels, and that conversion keeps the model's predictions."""

import io

import numpy as np
import pytest
from support import assert_one_line_failure, run_cli

from npcai.model import catalog
from npcai.model.native import Batch, Context, Model

TEXT = ("You are Brom, the village blacksmith. You are gruff but kind, and you never haggle. "
        "The player asks: can you fix my sword before the tournament? Brom answers:")


@pytest.fixture(scope="module")
def shipped_and_run(model_path):
    return catalog.cached_path(catalog.DEFAULT_MODEL), model_path


def test_the_default_model_runs_converted_to_q8_0_next_to_its_shipped_file(shipped_and_run):
    shipped, run = shipped_and_run
    assert shipped.exists() and shipped.stat().st_size == catalog.CATALOG[catalog.DEFAULT_MODEL].size
    assert run != shipped and run.name.endswith("-as-Q8_0.gguf")
    described = [_describe(p) for p in (shipped, run)]
    assert "Q4_1" in described[0] and "Q8_0" in described[1]


def test_the_conversion_keeps_the_shipped_models_predictions(shipped_and_run):
    shipped, run = (_log_probs(p) for p in shipped_and_run)
    kl = (np.exp(shipped) * (shipped - run)).sum(axis=1)
    agree = (shipped.argmax(axis=1) == run.argmax(axis=1)).mean()
    assert kl.mean() < 0.03 and agree > 0.9, (kl.mean(), agree)


def test_resolving_again_reuses_the_conversion(shipped_and_run):
    _, run = shipped_and_run
    before = run.stat().st_mtime_ns
    assert catalog.resolve(catalog.DEFAULT_MODEL) == run
    assert run.stat().st_mtime_ns == before


def _describe(path) -> str:
    m = Model(path)
    try:
        return m.describe()
    finally:
        m.close()


def _log_probs(path) -> np.ndarray:
    """Next-token log-probabilities at every position of TEXT."""
    m = Model(path)
    ctx = Context(m, n_ctx=512, n_batch=256, n_seq=1, threads=2)
    batch = Batch(256)
    try:
        tokens = m.tokenize(TEXT, add_bos=True)
        for i, t in enumerate(tokens):
            batch.add(t, i, 0, True)
        assert ctx.decode(batch) == 0
        logits = np.stack([ctx.logits(i, m.n_vocab).astype(np.float64) for i in range(len(tokens))])
    finally:
        batch.close(), ctx.close(), m.close()
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def test_pulling_keeps_a_model_that_runs_as_shipped_and_converts_one_that_does_not(tmp_path, monkeypatch):
    """A fresh cache: every catalog model pulls to a file that exists and loads."""
    monkeypatch.setenv("NPCAI_CACHE", str(tmp_path))
    for name, entry in catalog.CATALOG.items():
        path = catalog.pull(name, out=io.StringIO())
        assert path == catalog.run_path(name) and path.exists()
        assert catalog.cached_path(name).stat().st_size == entry.size  # the verified download stays
        assert catalog.resolve(name, pull_missing=False) == path


@pytest.mark.parametrize("command", [("models", "pull", "smollm2-135m"), ("serve", "--model", "smollm2-135m")])
def test_a_cache_that_cannot_be_written_fails_in_one_line(tmp_path, monkeypatch, command):
    """A cache folder that is a file (or read-only) gave a traceback and exit 1 from pull and the first serve."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("NPCAI_CACHE", str(blocker))
    assert_one_line_failure(run_cli(*command), f"cannot write the model cache {blocker / 'models'}")


def test_pulling_a_model_already_pulled_and_verified_keeps_the_file_that_runs(tmp_path, monkeypatch):
    """A second pull downloaded and converted again: the file that runs got a new time, so the merged adapter
    file named by it was made again beside the old one (244 MB each time)."""
    monkeypatch.setenv("NPCAI_CACHE", str(tmp_path))
    run = catalog.pull(catalog.DEFAULT_MODEL, out=io.StringIO())
    before = run.stat().st_mtime_ns
    said = io.StringIO()
    assert catalog.pull(catalog.DEFAULT_MODEL, out=said) == run
    assert run.stat().st_mtime_ns == before
    assert "already pulled" in said.getvalue() and "pulling smollm2" not in said.getvalue()
