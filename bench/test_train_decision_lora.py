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


def test_after_line_items_are_asked_as_the_sidecar_asks_them():
    """The after-line choice is trained on the prompt ``say`` with ``actions`` scores: the NPC's chat with the
    line and its answer, the question, the lead; and the right option is the right action, then its arguments."""
    import json

    from npcai.model.template import ChatTemplate
    from npcai.sidecar.actions import AFTER_LINE, NO_ACTION_WORDS
    from npcai.sidecar.npc import DEFAULT_LEAD, Npc

    npc_id, spec = next(iter(json.loads(tdl.LINES_FILE.read_text())["npcs"].items()))
    enum_action = next(a for a in spec["actions"] if "enum" in json.dumps(a.get("args", {})))
    prop, schema = next(iter(enum_action["args"]["properties"].items()))
    rows = [{"npc": npc_id, "line": "Lovely day.", "answer": "It is!", "action": None, "args": {}},
            {"npc": npc_id, "line": "One, please.", "answer": "Here.", "action": enum_action["name"],
             "args": {prop: schema["enum"][-1]}}]
    m = Model(resolve(tdl.MODEL))
    try:
        items = tdl.line_items(m, rows)
        template = ChatTemplate(m)
        chat = Npc("", spec["persona"], messages=[("user", "One, please."), ("assistant", "Here.")]).chat(
            ("user", AFTER_LINE))
        rendered = template.tokens([*template.pieces(chat, True), (DEFAULT_LEAD, False)])
        pieces = {t: m.piece(t) for it in items for o in it.options for t in o}
    finally:
        m.close()

    def words(tokens):
        return b"".join(pieces[t] for t in tokens).decode()
    small_talk, action, action_args = items  # no arguments to decide after small talk
    assert words(small_talk.options[small_talk.label]).strip() == NO_ACTION_WORDS
    assert action.stem == action_args.stem == rendered
    assert words(action.options[action.label]).strip() == enum_action["description"]
    assert len(action_args.options) == len(schema["enum"])
    assert words(action_args.options[action_args.label]).strip().endswith(schema["enum"][-1].replace("_", " "))
