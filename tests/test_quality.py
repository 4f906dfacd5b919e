"""The quality benchmark's parts: its data, its measures, and how it skips what is not there."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from support import assert_one_line_failure, run_cli, shared_data

from npcai.bench import quality
from npcai.bench.anchor import Anchor, Scored


def test_the_game_set_spans_roles_with_varied_options_and_one_answer_each():
    test, examples = quality.game("test"), quality.game("example")
    assert len(test) >= 150 and len(examples) >= 16
    roles = collections.Counter(q.role for q in test)
    assert len(roles) >= 12 and min(roles.values()) >= 8
    assert {len(q.options) for q in test} >= {2, 3, 4, 5}
    for q in test + examples:
        assert 0 <= q.label < len(q.options) and len(set(q.options)) == len(q.options) and q.persona
    assert not {q.situation for q in test} & {q.situation for q in examples}  # examples are never scored
    longest_right = sum(max(q.options, key=len) == q.options[q.label] for q in test)
    assert longest_right < len(test) / 2  # picking the longest option is no way to score well


def test_public_sets_load_as_lm_evaluation_harness_words_them():
    sets = dict(quality.public_sets(shared_data("quality").parent, 0, print))
    copa = sets["copa"]
    assert len(copa) == 1000 and len(sets["piqa"]) == 1838 and len(sets["arc_easy"]) >= 2300
    first = copa[0]  # "My body cast a shadow over the grass." (cause)
    assert first.context == "My body cast a shadow over the grass because"
    assert first.options == ("the sun was rising.", "the grass was cut.") and first.label == 0
    # decide is told the premise by a storyteller, and the lead asks for the cause or the effect (chosen on COPA dev)
    assert (first.situation, first.lead, first.persona, first.per_byte) == (
        "My body cast a shadow over the grass.", "It happened because", quality.STORY_PERSONA, True)
    effect = next(q for q in copa if q.context.endswith(" therefore"))
    assert effect.lead == "As a result," and "?" not in effect.situation
    assert quality.sample(copa, 10) == quality.sample(copa, 10) and len(quality.sample(copa, 10)) == 10


def test_the_anchor_continues_with_piqas_solutions_as_written_and_decide_gets_them_without_outer_spaces(tmp_path):
    """lm-evaluation-harness's PIQA does not strip its text: "Question: {{goal}}\nAnswer:" and " " + sol1 / sol2,
    a trailing space included (118 of PIQA's 1,838 validation items carry one)."""
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "piqa_valid.jsonl").write_text(
        '{"id": 0, "goal": "Keep bread fresh", "sol1": "Wrap it in cloth. ", "sol2": "Leave it in the sun.", "label": 0}\n'
        '{"id": 1, "goal": "Cool tea", "sol1": "Add ice.", "sol2": "Boil it.", "label": 0}\n')
    spaced, plain = quality.piqa(tmp_path / "quality")
    assert spaced.options == ("Wrap it in cloth.", "Leave it in the sun.")  # decide scores an option without them
    assert spaced.continuations == ["Wrap it in cloth. ", "Leave it in the sun."]
    assert plain.continuations == ["Add ice.", "Boil it."] and spaced.context == "Question: Keep bread fresh\nAnswer:"


def test_a_missing_data_folder_is_named_and_skipped(tmp_path):
    said = []
    assert quality.public_sets(tmp_path, 10, said.append) == []
    assert len(said) == 3 and all(str(tmp_path / "quality") in line and "skipped" in line for line in said)


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_grows_with_overconfidence():
    assert quality.expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    assert quality.expected_calibration_error([0.95] * 4, [True, False, True, False]) == pytest.approx(0.45)


def test_repetition_is_the_share_of_3_grams_seen_before():
    line = "the smith hits the iron the smith hits the iron"
    assert quality.repeated_share(quality.trigrams(line)) == pytest.approx(3 / 8)
    assert quality.repeated_share(quality.trigrams("a fine new day")) == 0.0
    assert quality.persona_name("You are Brom, the gruff blacksmith.") == "Brom"
    assert set(quality.self_names("Oh, I'm Grimbold Ironfist. My name is Brom, they say.")) == {"Grimbold", "Brom"}


def test_the_bench_takes_a_count_of_items_or_all_of_them(tmp_path):
    """`--quality-items all` scores every item of each public set; a count that is not one is refused in one line."""
    from npcai.cli import build_parser

    assert build_parser().parse_args(["bench", "--quality-items", "all"]).quality_items == -1
    assert build_parser().parse_args(["bench", "--quality-items", "300"]).quality_items == 300
    items = quality.game()
    assert quality.sample(items, -1) == items and len(quality.sample(items, 20)) == 20
    for bad in ("many", "0", "-5"):
        assert_one_line_failure(run_cli("bench", "--quality-items", bad, "--out", str(tmp_path / "r.json")),
                                "expected a positive number or 'all'")


def test_the_anchors_acc_norm_divides_by_each_options_length_in_characters_without_the_space():
    """lm-evaluation-harness's acc_norm: the summed log-likelihood over len(choice), the " " before it not counted.
    Per byte of " " + option, "ab" (-3.0 over 3) beats "abcde" (-6.5 over 6); per character (-1.5 < -1.3) it loses."""
    scored = Scored(loglik=(-3.0, -6.5), nchars=(2, 5))
    assert (scored.pick, scored.pick_norm) == (0, 1)


def test_the_anchor_counts_an_options_characters_not_its_bytes(model_path):
    anchor = Anchor(model_path, threads=1)
    try:
        scored = anchor.score("The guard says:", ["halt", "café au lait"])
    finally:
        anchor.close()
    assert scored.nchars == (4, 12)  # "é" is one character, two bytes
    assert scored.pick_norm == int(np.argmax(np.array(scored.loglik) / [4, 12]))


def test_the_bench_help_names_the_models_it_runs_by_default():
    from npcai.bench.runner import DEFAULT_MODELS

    proc = run_cli("bench", "--help")
    assert proc.returncode == 0
    said = " ".join(proc.stdout.split())
    assert f"default: {' and '.join(DEFAULT_MODELS)}" in said, said


def test_an_empty_set_file_is_named_and_skipped_like_a_missing_one(tmp_path):
    """A 0-byte file used to end the run, after the game set, in a ZeroDivisionError; a schemas file with no schemas too."""
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "piqa_valid.jsonl").write_text("")
    said = []
    assert quality.public_sets(tmp_path, 10, said.append) == []
    piqa = [line for line in said if "piqa" in line]
    assert len(piqa) == 1 and "skipped" in piqa[0] and str(tmp_path / "quality" / "piqa_valid.jsonl") in piqa[0]
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "jsonschemabench_sample.json").write_text('{"schemas": []}')
    said.clear()
    assert quality.schema_entries(tmp_path, said.append) == []
    assert len(said) == 1 and "skipped" in said[0] and "jsonschemabench_sample.json" in said[0]


@pytest.mark.parametrize("name, text, line, needle", [
    ("piqa_valid.jsonl", '{"id": 0, "goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n{"id": 1, "goal": "g",\n', 2,
     "not a JSON object"),
    ("piqa_valid.jsonl", '{"id": 0, "goal": "g", "sol1": "a", "label": 0}\n', 1, "'sol2'"),
    ("arc_easy_test.jsonl", '\n{"id": "x", "question": "q", "choices": ["a", "b"], "label": 2}\n', 2,
     "label 2 is not one of its 2 options"),
])
def test_a_malformed_set_file_stops_the_bench_in_one_line_naming_the_file_and_line(tmp_path, name, text, line,
                                                                                   needle):
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / name).write_text(text)
    proc = run_cli("bench", "--only", "quality", "--data", str(tmp_path), "--out", str(tmp_path / "r.json"),
                   timeout=300)
    assert_one_line_failure(proc, f"{tmp_path / 'quality' / name}:{line}: ")
    assert needle in proc.stderr
