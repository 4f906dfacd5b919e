"""train_decision_lora.py's splits: what an adapter is trained on is never what it is validated on."""

import pytest
import train_decision_lora as tdl

from npcai.model.catalog import resolve
from npcai.model.native import Model


@pytest.mark.parametrize("share", [0.1, 0.2, 0.3])
def test_the_validation_split_scored_is_the_one_training_held_out(tmp_path, share):
    trained = {q.id for q in tdl._written(share)[0]}
    held = {q.id for q in tdl._written(share)[1]}
    m = Model(resolve(tdl.MODEL))
    try:
        scored = tdl.eval_sets(tmp_path, m, share)["val"]  # tmp_path: no public sets, the written ones only
    finally:
        m.close()
    assert {it.name for it in scored} == held and not held & trained
