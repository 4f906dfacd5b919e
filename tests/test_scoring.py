"""The option scorer: a decision's options scored in one step, as the main cache would score them."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import options_scored_alone

from npcai.errors import ModelError
from npcai.model.kv import KvSeq
from npcai.model.native import Batch, Context, Model, moved_state
from npcai.model.scoring import (
    TREE_ROOM,
    OptionScorer,
    OptionTree,
    _add_options,
    common_prefix,
    option_cells,
    tree_cells,
)
from npcai.protocol.checks import OPTION_ROOM_TOKENS

#: Scores may differ by this much (nats) from a sequence of its own: llama.cpp's CPU flash attention
#: accumulates in half precision, and cells of other sequences change its rounding. A mask that let one
#: stem see another's tokens would move them by whole nats.
NUMERIC = 0.3
PERSONA = "You are Grik, a cowardly goblin scout who serves the goblin king."
OPTIONS = ["attack", "flee", "beg for mercy", "pretend to be dead"]


def _stem(model: Model, situation: str) -> list[int]:
    text = model.apply_chat_template([("system", PERSONA), ("user", situation)], True)
    return model.tokenize(text + "The sensible thing to do is to")


def test_a_tree_scores_every_option_as_scoring_each_alone_does(model):
    main = Context(model, n_ctx=2048, n_batch=512, n_seq=4, threads=2)
    scorer = OptionScorer(model, prefix_cells=512, max_seqs=16, threads=2, flash_attn=None, main=main)
    try:
        stem = _stem(model, "A knight with a drawn sword corners you in the forest.")
        prior = _stem(model, "Nothing happens.")
        options = [model.tokenize(" " + o) for o in OPTIONS]
        tree = OptionTree(seq=-1, pos=0, pending=[0], all_logits=True, stems=[stem, prior], options=options)
        assert scorer.evaluate(tree) == 0
        assert np.allclose(tree.scores[0], options_scored_alone(model, stem, options), atol=NUMERIC)
        assert np.allclose(tree.scores[1], options_scored_alone(model, prior, options), atol=NUMERIC)
        assert np.abs(tree.scores[0] - tree.scores[1]).max() > 1.0, "each stem's options see only their own stem"
    finally:
        scorer.close()
        main.close()


def test_the_npcs_evaluated_prefix_is_moved_over_not_evaluated_again(model):
    """The persona's cells come from the main cache (a stream per sequence) into the scorer's unified one,
    and stay there: a decision counts them as evaluated even when its NPC has since given its sequence to
    another NPC's stream (counted as pending, they made the engine shed decision after decision)."""
    main = Context(model, n_ctx=2048, n_batch=512, n_seq=4, threads=2)
    scorer = OptionScorer(model, prefix_cells=512, max_seqs=16, threads=2, flash_attn=None, main=main)
    b = Batch(512)
    try:
        stem = _stem(model, "A troll blocks the bridge you must cross.")
        options = [model.tokenize(" " + o) for o in OPTIONS]
        persona = stem[:len(stem) - 12]
        kv = KvSeq(seq=2, tokens=list(persona))
        for i, t in enumerate(persona):
            b.add(t, i, 2, False)
        assert main.decode(b) == 0
        assert scorer.evaluated(stem, kv) == len(persona)  # the NPC's own cells
        tree = OptionTree(seq=-1, pos=0, pending=[0], all_logits=True, stems=[stem], options=options, source=kv,
                          keep=len(persona))
        assert scorer.evaluate(tree) == 0
        assert scorer.stats["prefix_loads"] == 1 and scorer.stats["loaded_cells"] == len(persona)
        assert scorer.batch.n == 12 + option_cells(options)  # only the situation's end and the options
        assert np.allclose(tree.scores[0], options_scored_alone(model, stem, options), atol=NUMERIC)
        gave_way = KvSeq(seq=None, tokens=[])  # the NPC's sequence went to another's stream, nothing parked
        assert scorer.evaluated(stem, gave_way) == len(persona)
        again = OptionTree(seq=-1, pos=0, pending=[0], all_logits=True, stems=[stem], options=options,
                           source=gave_way, keep=len(persona))
        assert scorer.evaluate(again) == 0
        assert scorer.stats["prefix_loads"] == 1, "the persona stayed cached in the scorer"
        assert scorer.batch.n == len(stem) - scorer.evaluated(stem, gave_way) + option_cells(options)
        assert np.allclose(again.scores[0], tree.scores[0], atol=1e-3)
    finally:
        b.close()
        scorer.close()
        main.close()


def test_a_prior_stem_starts_from_the_persona_while_the_decision_keeps_the_npcs_history(model):
    """A first decision over new options also scores their content-free prior: a second stem with the
    persona and no history. The decision's own stem starts from every cell of the NPC moved over (persona
    and history), the prior's sequences from the persona's alone: neither evaluates the history again,
    and neither sees the other's cells."""
    main = Context(model, n_ctx=2048, n_batch=512, n_seq=4, threads=2)
    scorer = OptionScorer(model, prefix_cells=512, max_seqs=16, threads=2, flash_attn=None, main=main)
    b = Batch(512)
    try:
        talk = [("system", PERSONA), ("user", "Who goes there?"), ("assistant", "Only Grik! Grik is nobody, sir."),
                ("user", "A knight with a drawn sword corners you in the forest.")]
        stem = model.tokenize(model.apply_chat_template(talk, True) + "The sensible thing to do is to")
        prior = _stem(model, "Nothing happens.")
        options = [model.tokenize(" " + o) for o in OPTIONS]
        npc_cells = stem[:len(stem) - 12]  # persona and history, evaluated in the main cache
        for i, t in enumerate(npc_cells):
            b.add(t, i, 2, False)
        assert main.decode(b) == 0
        tree = OptionTree(seq=-1, pos=0, pending=[0], all_logits=True, stems=[stem, prior], options=options,
                          source=KvSeq(seq=2, tokens=list(npc_cells)), keep=len(npc_cells))
        assert scorer.evaluate(tree) == 0
        assert scorer.stats["loaded_cells"] == len(npc_cells)
        shared = common_prefix(stem, prior)  # the persona's turn
        assert shared < len(npc_cells) - 10
        assert scorer.batch.n == 12 + (len(prior) - shared) + 2 * option_cells(options)
        assert np.allclose(tree.scores[0], options_scored_alone(model, stem, options), atol=NUMERIC)
        assert np.allclose(tree.scores[1], options_scored_alone(model, prior, options), atol=NUMERIC)
    finally:
        b.close()
        scorer.close()
        main.close()


def test_a_prefix_moves_between_caches_with_and_without_flash_attention(model):
    """SmolLM2's main cache runs with flash attention (its streams' steps) and its scorer without (long
    prompts): their V caches lie differently, so a moved prefix is relaid out, and scores as if evaluated
    in the scorer itself; the scorer still counts it as loaded, not evaluated again."""
    stem = _stem(model, "A troll blocks the bridge you must cross.")
    options = [model.tokenize(" " + o) for o in OPTIONS]
    persona = stem[:len(stem) - 12]
    for main_fa in (True, False):
        main = Context(model, n_ctx=2048, n_batch=512, n_seq=4, threads=2, flash_attn=main_fa)
        scorer = OptionScorer(model, prefix_cells=512, max_seqs=16, threads=2, flash_attn=not main_fa, main=main)
        b = Batch(512)
        try:
            for i, t in enumerate(persona):
                b.add(t, i, 1, False)
            assert main.decode(b) == 0
            tree = OptionTree(seq=-1, pos=0, pending=[0], all_logits=True, stems=[stem], options=options,
                              source=KvSeq(seq=1, tokens=list(persona)), keep=len(persona))
            assert scorer.evaluate(tree) == 0
            assert scorer.stats["prefix_loads"] == 1 and scorer.batch.n == 12 + option_cells(options)
            assert np.allclose(tree.scores[0], options_scored_alone(model, stem, options), atol=NUMERIC)
        finally:
            b.close()
            scorer.close()
            main.close()


def test_a_saved_sequence_relaid_out_twice_is_the_same_bytes(model):
    """The V relayout is exact: there and back gives the saved state llama.cpp wrote, and a buffer given
    for the result is used when it is large enough (moves reuse theirs)."""
    ctx = Context(model, n_ctx=1024, n_batch=256, n_seq=2, threads=2, flash_attn=False)
    b = Batch(256)
    try:
        tokens = model.tokenize("The guard watches the gate while the merchant counts his coins.")
        for i, t in enumerate(tokens):
            b.add(t, i, 1, False)
        assert ctx.decode(b) == 0
        saved = moved_state(ctx.seq_save(1))  # one stream of two, as a unified cache reads it
        assert ctx.seq_load(1, saved) is False, "a cache with a stream per sequence refuses a one-stream state"
        by_cell = moved_state(saved, False)
        assert len(by_cell) == len(saved) and not np.array_equal(by_cell, saved)  # same values, laid out otherwise
        room = np.empty(len(saved) * 2, dtype=np.uint8)
        back = moved_state(by_cell, True, out=room)
        assert np.array_equal(back, saved) and back.base is room
        assert np.array_equal(moved_state(saved, True), saved), "already in the asked layout: left as it is"
    finally:
        b.close()
        ctx.close()


def test_each_cache_of_a_sliding_window_model_is_rewritten(model):
    """Gemma 3's sliding-window layers have a cache of their own, saved after the others': a moved state
    rewrites both caches' streams (before, Gemma's NPC prefixes were refused and evaluated again)."""
    ctx = Context(model, n_ctx=1024, n_batch=256, n_seq=2, threads=2, flash_attn=False)
    b = Batch(256)
    try:
        for i, t in enumerate(model.tokenize("A merchant haggles over a copper pot.")):
            b.add(t, i, 1, False)
        assert ctx.decode(b) == 0
        saved = ctx.seq_save(1)
        header, cache = saved[:8], saved[8:]
        two = header + cache + cache  # the layout of a model with two caches
        one = moved_state(saved).tobytes()
        assert moved_state(two).tobytes() == header + one[8:] * 2
        relaid = moved_state(saved, False).tobytes()
        assert moved_state(two, False).tobytes() == header + relaid[8:] * 2
        with pytest.raises(ModelError):
            moved_state(two[:-3])  # cut short: refused as a value, never read past the end
    finally:
        b.close()
        ctx.close()


def test_options_that_start_alike_share_the_cells_of_their_common_start(model):
    """An action's argument combinations ("sell an item: ...") evaluate their shared words once."""
    main = Context(model, n_ctx=2048, n_batch=512, n_seq=4, threads=2)
    scorer = OptionScorer(model, prefix_cells=512, max_seqs=16, threads=2, flash_attn=None, main=main)
    try:
        stem = _stem(model, "A customer pays 20 gold for a shield.")
        texts = ["sell an item", "sell an item: shield", "sell an item: sword", "refuse the deal"]
        options = [model.tokenize(" " + o) for o in texts]
        tree = OptionTree(seq=-1, pos=0, pending=[0], all_logits=True, stems=[stem], options=options)
        assert scorer.evaluate(tree) == 0
        assert np.allclose(tree.scores[0], options_scored_alone(model, stem, options), atol=NUMERIC)
        prefixes = {tuple(o[:j + 1]) for o in options for j in range(len(o) - 1)}
        assert scorer.batch.n == len(stem) + len(prefixes) < len(stem) + sum(len(o) - 1 for o in options)
        assert option_cells(options) == len(prefixes) and tree_cells([stem], options) == scorer.batch.n
    finally:
        scorer.close()
        main.close()


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.lists(st.lists(st.integers(0, 3), max_size=7), max_size=8))
def test_option_cells_counts_each_start_the_options_share_once(options):
    """Every distinct start of an option (short of its last token), as a set of them counts (options alike,
    repeated, one a prefix of another, empty: options made of few tokens cover them all)."""
    assert option_cells(options) == len({tuple(o[:j + 1]) for o in options for j in range(len(o) - 1)})


def test_long_options_are_counted_in_memory_linear_in_their_tokens():
    """Two options of 3,000 tokens: a set of every prefix held 9 million token ids (about 75 MB; at 20,000
    tokens, 4 GB and 9 s of the engine thread before the decision could be refused as too long)."""
    options = [[1] * 3000, [2] * 3000, [1] * 1500 + [3] * 1500]
    tracemalloc.start()
    try:
        cells = option_cells(options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert cells == 2999 + 2999 + 1499 and peak < 1 << 20  # the third shares 1,500 starts with the first


def test_the_protocol_refuses_options_by_their_length_against_the_scorers_own_room():
    assert OPTION_ROOM_TOKENS == TREE_ROOM


def test_long_options_are_added_to_a_step_in_memory_linear_in_their_tokens():
    """Each start the options share is one row, in all their sequences; found by walking a trie, not by keying
    rows on whole prefixes (quadratic: about 75 MB for these)."""
    options = [[1] * 3000, [2] * 3000, [1] * 1500 + [3] * 1500]
    b = Batch(8000, n_seq_max=3)
    try:
        tracemalloc.start()
        try:
            rows = _add_options(b, 10, options, [0, 1, 2])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert b.n == option_cells(options) and rows[2][:1500] == rows[0][:1500] and rows[2][1500] != rows[0][1500]
        assert [len(r) for r in rows] == [2999] * 3 and peak < 4 << 20
    finally:
        b.close()


def test_only_rows_whose_next_token_is_scored_ask_for_logits(model):
    """Each row that asks for logits pays the vocabulary's output projection (SmolLM2: about 7 of a 6-way
    choice's 71 ms, docs/PERFORMANCE.md): the stem's last token and each distinct option start ask, and
    nothing else does, not the situation's other tokens nor an option's last token."""
    main = Context(model, n_ctx=2048, n_batch=512, n_seq=4, threads=2)
    scorer = OptionScorer(model, prefix_cells=512, max_seqs=16, threads=2, flash_attn=None, main=main)
    try:
        stem = _stem(model, "A customer pays 20 gold for a shield.")
        options = [model.tokenize(" " + o) for o in ["sell an item: shield", "sell an item: sword", "refuse"]]
        tree = OptionTree(seq=-1, pos=0, pending=[0], all_logits=True, stems=[stem], options=options)
        assert scorer.evaluate(tree) == 0
        b = scorer.batch
        asked = [int(r) for r in np.flatnonzero(b.logits[:b.n])]
        assert asked == [len(stem) - 1, *range(len(stem), b.n)] and len(asked) == 1 + option_cells(options)
    finally:
        scorer.close()
        main.close()


def test_the_main_cache_takes_flash_attn_and_choice_decisions_keep_the_catalogs_choice(model_path):
    """SmolLM2's catalog entry runs flash attention in the main cache (streams) and not in the scorer
    (long prompts); --flash-attn moves the main cache only."""
    from npcai.model import catalog
    from npcai.sidecar.admission import load_runtimes
    from npcai.sidecar.settings import Settings

    entry = catalog.entry_for(model_path)
    assert entry is not None and entry.flash_attn is True and entry.scorer_flash_attn is False
    for setting, main_transposed in (("auto", False), ("on", False), ("off", True)):
        rt = load_runtimes(Settings(flash_attn=setting, n_ctx=1024, n_seq=2, npc_ctx=512),
                           {"dialogue": model_path})["dialogue"]
        try:
            assert rt.ctx.v_transposed is main_transposed, setting  # without flash attention V lies transposed
            assert rt.scorer().ctx.v_transposed is True, setting
        finally:
            rt.close()
