"""The research benches' own sets and rules (bench/role_keeping.py, bench/action_lines.py, bench/action_args.py, the village's trade):
what they count is what they say they count, and what is reported was never tuned on."""

import re
import sys
from pathlib import Path

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import action_lines
import role_keeping

from npcai.demo import load_scenario


@pytest.mark.parametrize("role, text, marks", [
    ("blacksmith", "I'm sorry, but I'm not a blacksmith.", {"denies", "refuses"}),
    ("town guard", "I am not the town guard you want.", {"denies", "role_word"}),  # words between "not" and the trade
    ("blacksmith", "I'm not a baker, I work the forge.", {"role_word"}),  # another trade denied: still in role
    ("healer", "As an AI, I cannot help you.", {"program"}),
    ("farmer", "Unfortunately the rain ruined the wheat.", {"refuses", "role_word"}),
    ("sailor", "Aye, the tide turns at dawn.", {"role_word", "ends_sentence"}),
])
def test_role_keeping_marks_a_line_by_its_rules(role, text, marks):
    judged = role_keeping.judge(role, text)
    assert {k for k, v in judged.items() if v} - {"ends_sentence"} == marks - {"ends_sentence"}
    assert judged["ends_sentence"] == text.endswith(".")


def test_role_keeping_asks_every_role_of_the_game_set_without_giving_its_words_away():
    cast = role_keeping.personas(2)
    assert {role for role, _ in cast} == set(role_keeping.ROLES) and len(cast) == 2 * len(role_keeping.ROLES)
    for role, (asks, words) in role_keeping.ROLES.items():
        assert len(asks) == 3
        for ask in asks:  # a role word the ask already says would count an echo as staying in role
            assert not any(re.search(rf"\b{re.escape(w)}", ask.lower()) for w in words), (role, ask)


@pytest.mark.parametrize("name", list(action_lines.SETS))
def test_every_action_line_names_a_declared_action_with_valid_arguments(name):
    npcs, items = action_lines.SETS[name]
    for npc, line, action, args in items:
        declared = {a["name"]: a for a in npcs[npc][1]}
        if action is None:
            assert args == {}, line
            continue
        assert action in declared, line
        jsonschema.validate(args, declared[action].get("args", {"type": "object", "maxProperties": 0}))


def test_the_reported_action_lines_are_on_npcs_the_dev_lines_never_use():
    dev_npcs, dev = action_lines.SETS["dev"]
    held_npcs, held = action_lines.SETS["held"]
    assert {i[0] for i in dev} <= set(dev_npcs) and {i[0] for i in held} <= set(held_npcs)
    assert not set(dev_npcs) & set(held_npcs)
    assert not {i[1] for i in dev} & {i[1] for i in held}
    for items in (dev, held):  # small talk, where the right answer is not to act, is in both
        assert any(action is None for _, _, action, _ in items)


def test_the_village_trade_marks_only_declared_actions_as_not_sensible():
    trade = load_scenario(None)["trade"]
    assert set(trade["not_sensible"]) <= {a["name"] for a in trade["actions"]}


def test_the_village_trade_expects_arguments_its_actions_allow():
    trade = load_scenario(None)["trade"]
    declared = {a["name"]: a.get("args", {"type": "object", "properties": {}}) for a in trade["actions"]}
    for name, args in trade["right_args"].items():
        jsonschema.validate(args, declared[name])


def test_the_arguments_bench_sets_are_the_action_sets_and_keep_held_out_npcs_apart():
    """bench/action_args.py reads the same items as the action benches: dev on their dev NPCs, held on the
    held-out ones, and only items whose right action takes arguments are decided."""
    import action_args
    for name, (npcs, situations, lines) in action_args.SETS.items():
        assert lines is action_lines.SETS[name][1] and npcs is action_lines.SETS[name][0]
        assert {i[0] for i in (*situations, *lines)} <= set(npcs)
        assert any(args for *_, args in situations) and any(args for *_, args in lines)
