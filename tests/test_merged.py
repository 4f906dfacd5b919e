"""An adapter merged into its model's weights (``npcai/model/merged.py``) scores options as llama.cpp
applying the adapter at run time does, and is made once per model and adapter."""

from __future__ import annotations

import llama_cpp as L
import numpy as np
import pytest
from support import options_scored_alone

from npcai.model import catalog
from npcai.model.merged import merged_weights
from npcai.model.native import Model

ADAPTER = "smollm2-135m-decision"
#: Nats an option's summed log-likelihood may move. Not the merge's rounding: the same weights through another
#: kernel move this much (a half-precision copy of the model itself moved these options by up to 0.35 nats
#: against its Q8_0, which rounds the activations too; merged in single precision, by 0.37). Without the
#: adapter the options move by 0.6-12 nats.
KERNEL_NOISE = 0.5
CASES = [
    ("You are Hilda, a stern town guard of Oakvale.",
     "A thief snatches a purse from a woman at the market and runs past you.",
     ["chase the thief", "buy some bread", "go to sleep", "sing a song"]),
    ("You are Grik, a cowardly goblin scout who serves the goblin king.",
     "A knight with a drawn sword corners you in the forest.",
     ["attack", "flee", "beg for mercy", "pretend to be dead"]),
]


@pytest.fixture(scope="module")
def models(model_path, tmp_path_factory):
    adapter = catalog.resolve_adapter(ADAPTER)[1]
    base = Model(model_path)
    merged = Model(merged_weights(model_path, adapter, tmp_path_factory.mktemp("cache")))
    handle = L.llama_adapter_lora_init(base.handle, str(adapter).encode())
    assert handle
    yield base, merged, handle
    merged.close()
    base.close()


def _scores(model: Model, handle, persona: str, situation: str, options: list[str]) -> np.ndarray:
    """Each option's log-likelihood after the question, alone in its sequence; with ``handle`` applied at run time."""
    text = model.apply_chat_template([("system", persona), ("user", situation + " What should you do?")], True)
    stem = model.tokenize(text + "I should")
    return options_scored_alone(model, stem, [model.tokenize(" " + o) for o in options], handle)


@pytest.mark.parametrize("persona, situation, options", CASES)
def test_merged_weights_score_options_as_the_adapter_applied_at_run_time(models, persona, situation, options):
    base, merged, handle = models
    at_run_time = _scores(base, handle, persona, situation, options)
    assert np.abs(_scores(merged, None, persona, situation, options) - at_run_time).max() < KERNEL_NOISE
    assert np.abs(_scores(base, None, persona, situation, options) - at_run_time).max() > 2 * KERNEL_NOISE


def test_the_merged_file_is_made_once_and_then_reused(model_path, tmp_path):
    adapter = catalog.resolve_adapter(ADAPTER)[1]
    first = merged_weights(model_path, adapter, tmp_path)
    made = first.stat().st_mtime_ns
    assert merged_weights(model_path, adapter, tmp_path) == first
    assert first.stat().st_mtime_ns == made
    assert [p.name for p in first.parent.iterdir()] == [first.name], "no partial file is left behind"
