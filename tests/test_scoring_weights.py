"""Option trees are scored on weights chosen for batches: where llama.cpp has BF16 matrix kernels, a BF16 copy
of the catalog model, which evaluates a tree's many tokens in one step faster than the file that runs (that file
stays for streams, a token at a time), and which scores options as the model does."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from support import options_scored_alone

from npcai.bench.harness import Bench
from npcai.errors import ModelError, NpcaiError
from npcai.model import catalog, native
from npcai.model.native import Context, Model, batch_weights
from npcai.model.runtime import Runtime
from npcai.model.scoring import OptionScorer, OptionTree
from npcai.sidecar.admission import load_runtimes
from npcai.sidecar.settings import Settings

PERSONA = "You are Grik, a cowardly goblin scout who serves the goblin king."
OPTIONS = ["attack", "flee", "beg for mercy", "pretend to be dead", "hide behind a tree"]
SITUATIONS = ["A knight with a drawn sword corners you in the forest.",
              "The goblin king orders you to scout the human village tonight.",
              "You find a sleeping dragon on a pile of gold."]


@pytest.fixture(scope="module")
def scoring_copy(model_path):
    """The default model's BF16 copy, made as a machine with BF16 kernels makes it (any CPU can run it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "batch_weights", lambda system_info=None: "BF16")
        path = catalog.scoring_weights(catalog.DEFAULT_MODEL, out=io.StringIO())
    assert path is not None and path.name.endswith("-as-BF16.gguf") and path.parent == model_path.parent
    return path


def test_bf16_is_chosen_only_where_llama_cpp_was_built_with_bf16_kernels():
    assert batch_weights(b"CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | REPACK = 1 |") == "BF16"
    assert batch_weights(b"CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | REPACK = 1 |") is None
    assert batch_weights(b"CPU : NEON = 1 | ARM_FMA = 1 |") is None


def test_the_copy_is_bf16_made_once_and_reused(scoring_copy):
    m = Model(scoring_copy)
    try:
        assert "BF16" in m.describe()
    finally:
        m.close()
    before = scoring_copy.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "batch_weights", lambda system_info=None: "BF16")
        assert catalog.scoring_weights(catalog.DEFAULT_MODEL) == scoring_copy
    assert scoring_copy.stat().st_mtime_ns == before


def test_a_tree_scored_on_the_copy_keeps_the_shipped_models_scores_as_the_file_that_runs_does(model, scoring_copy):
    """Both files round the shipped weights (the file that runs to Q8_0, the copy to BF16): option by option,
    the copy's scores stay as close to the shipped model's as the file that runs does (SmolLM2: within 0.33 and
    0.39 nats), and pick alike."""
    copy, shipped = Model(scoring_copy), Model(catalog.cached_path(catalog.DEFAULT_MODEL))
    main = Context(model, n_ctx=2048, n_batch=512, n_seq=4, threads=2)
    scorer = OptionScorer(copy, prefix_cells=512, max_seqs=16, threads=2, flash_attn=False, main=main)
    try:
        options = [model.tokenize(" " + o) for o in OPTIONS]
        for situation in SITUATIONS:
            text = model.apply_chat_template([("system", PERSONA), ("user", situation)], True)
            stem = model.tokenize(text + "I should")
            tree = OptionTree(seq=-1, pos=0, pending=[0], all_logits=True, stems=[stem], options=options)
            assert scorer.evaluate(tree) == 0
            own = np.array(options_scored_alone(shipped, stem, options))
            run = np.array(options_scored_alone(model, stem, options))
            assert np.abs(tree.scores[0] - own).max() <= np.abs(run - own).max() + 0.15, situation
            assert int(np.argmax(tree.scores[0])) == int(np.argmax(own)) == int(np.argmax(run)), situation
    finally:
        scorer.close(), main.close(), copy.close(), shipped.close()


def test_a_runtime_scores_on_the_copy_by_default_and_on_its_own_weights_when_told(model_path, scoring_copy,
                                                                                   monkeypatch):
    monkeypatch.setattr(native, "batch_weights", lambda system_info=None: "BF16")
    for setting, scored_on in (("auto", scoring_copy), ("main", model_path)):
        rt = load_runtimes(Settings(scoring_weights=setting, n_ctx=1024, n_seq=2, npc_ctx=512),
                           {"decision": model_path})["decision"]
        try:
            assert rt.model.path == model_path, setting  # streams run on the file that runs either way
            assert rt.scorer().ctx.model.path == scored_on, setting
            assert rt.describe(["decision"])[0]["scoring_weights"] == scored_on.name, setting  # as hello says
        finally:
            rt.close()


def test_a_cpu_without_bf16_kernels_scores_on_the_file_that_runs(model_path, monkeypatch):
    monkeypatch.setattr(native, "batch_weights", lambda system_info=None: None)
    assert catalog.scoring_weights(catalog.DEFAULT_MODEL) is None
    rt = load_runtimes(Settings(n_ctx=1024, n_seq=2, npc_ctx=512), {"decision": model_path})["decision"]
    try:
        assert rt.scoring_model is rt.model and rt.scorer().ctx.model.path == model_path
    finally:
        rt.close()


def test_a_copy_that_cannot_be_made_leaves_the_file_that_runs_scoring_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "batch_weights", lambda system_info=None: "BF16")
    monkeypatch.setattr(catalog, "cache_dir", lambda: tmp_path)  # no copy there yet

    def fail(src, dst, weight_type, threads=0):
        raise ModelError("llama.cpp could not convert it")

    monkeypatch.setattr(native, "convert_weights", fail)
    out = io.StringIO()
    assert catalog.scoring_weights(catalog.DEFAULT_MODEL, out=out) is None
    note = out.getvalue().strip().splitlines()[-1]
    assert note.startswith("note: decisions are scored on ") and "could not convert" in note, note
    assert not list(tmp_path.iterdir())


def test_a_bundled_sidecar_converts_nothing_and_scores_on_a_copy_only_where_its_manifest_lists_one(
        tmp_path, scoring_copy, monkeypatch):
    monkeypatch.setattr(native, "batch_weights", lambda system_info=None: "BF16")
    monkeypatch.setattr(catalog, "cache_dir", lambda: tmp_path / "cache")
    catalog.use_bundled(tmp_path)
    try:
        assert catalog.scoring_weights(catalog.DEFAULT_MODEL) is None  # none shipped: nothing made
        assert not list(tmp_path.iterdir())
        (tmp_path / scoring_copy.name).symlink_to(scoring_copy)
        assert catalog.scoring_weights(catalog.DEFAULT_MODEL) is None  # there, but not listed: never verified
        catalog.use_bundled(tmp_path, frozenset({scoring_copy.name}))
        assert catalog.scoring_weights(catalog.DEFAULT_MODEL) == tmp_path / scoring_copy.name
        monkeypatch.setattr(native, "batch_weights", lambda system_info=None: None)
        assert catalog.scoring_weights(catalog.DEFAULT_MODEL) is None  # shipped, but this CPU has no BF16 kernels
    finally:
        catalog.use_bundled(None)


def test_a_bundle_built_with_scoring_weights_ships_the_copy_beside_the_file_that_runs(tmp_path, model_path,
                                                                                        scoring_copy, monkeypatch):
    from npcai.bundle import builder

    monkeypatch.setattr(native, "batch_weights", lambda system_info=None: "BF16")
    log = io.StringIO()
    table = builder._add_models(tmp_path, {"decision": model_path}, log, scoring_weights=True)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted([model_path.name, scoring_copy.name])
    assert table["decision"]["path"] == f"models/{model_path.name}"
    monkeypatch.setattr(native, "batch_weights", lambda system_info=None: None)
    log = io.StringIO()
    (tmp_path / "elsewhere").mkdir()
    builder._add_models(tmp_path / "elsewhere", {"decision": model_path}, log, scoring_weights=True)
    assert [p.name for p in (tmp_path / "elsewhere" / "models").iterdir()] == [model_path.name]
    assert "note: no copy of smollm2-135m for scoring decisions" in log.getvalue()


def test_a_damaged_copy_leaves_the_file_that_runs_scoring_with_a_note(model_path, tmp_path, capfd):
    damaged = tmp_path / "SmolLM2-135M-Instruct.Q4_1-as-BF16.gguf"
    damaged.write_bytes(b"GGUF" + bytes(60))
    rt = Runtime(model_path, name="under-test", n_ctx=512, n_seq=2, n_batch=64, threads=1,
                 grammar_dir=Path(Settings().grammar_dir), scoring_path=damaged)
    try:
        assert rt.scoring_model is rt.model and rt.scorer().ctx.model.path == model_path
    finally:
        rt.close()
    note = capfd.readouterr().err.strip().splitlines()[-1]
    assert note.startswith(f"note: decisions are scored on {model_path.name}: ") and damaged.name in note, note


def test_the_bench_replays_a_choices_forward_passes_on_the_weights_the_sidecars_hello_names(model_path):
    """The bench's "choice decision vs its forward passes" baseline runs llama.cpp on what the sidecar scores
    on, as ``hello`` says it: never a second guess of its own, which once replayed an adapter's choices on the copy."""
    bench = Bench(catalog.DEFAULT_MODEL, True, lambda _: None, threads=1)
    sc, c = bench.sidecar()
    try:
        announced = c.hello("pytest")["models"][0]["scoring_weights"]
        replayed, _, _ = bench.native(scorer=True)
        assert replayed.path.name == announced
        assert announced == (catalog.scoring_weights(catalog.DEFAULT_MODEL) or model_path).name  # this CPU's choice
    finally:
        c.close(), sc.close(), bench.close()


def test_the_bench_stops_in_one_line_when_the_weights_hello_names_are_not_in_the_cache(monkeypatch, tmp_path):
    bench = Bench(catalog.DEFAULT_MODEL, True, lambda _: None, threads=1)
    monkeypatch.setattr(catalog, "cache_dir", lambda: tmp_path)  # an empty model cache
    bench._scored_on = "elsewhere-as-BF16.gguf"  # as a sidecar with another model cache would say
    with pytest.raises(NpcaiError, match="scores choices on elsewhere-as-BF16.gguf, which is not in"):
        bench.native(scorer=True)
    bench.close()
