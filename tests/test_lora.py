"""`--lora ROLE=NAME|PATH`: a role's choice decisions scored through a LoRA adapter, the shipped one
by its catalog name; the rest of the sidecar (dialogue, other roles) left as the model makes it."""

from __future__ import annotations

import os

import pytest
from support import assert_one_line_failure, run_cli

from npcai import Client, Sidecar
from npcai.bench.quality import paired, probs_temperature
from npcai.model import catalog
from npcai.model.merged import merged_path

ADAPTER = "smollm2-135m-decision"
GUARD = "You are Hilda, a stern town guard of Oakvale."
SITUATION = "A thief snatches a purse from a woman at the market and runs past you."
CHOICES = ["chase the thief", "buy some bread", "go to sleep", "sing a song"]


@pytest.fixture(scope="module")
def adapted(model_path):
    with Sidecar("--lora", f"decision={ADAPTER}") as sc, Client(sc.endpoint) as c:
        yield c, c.hello("pytest")


def _decide(c: Client, **kw) -> dict[str, float]:
    c.npc("hilda", GUARD)
    return c.decide(SITUATION, npc="hilda", choices=CHOICES, temperature=0.0, **kw)["probs"]


def test_the_shipped_adapter_changes_the_decision_roles_probs(adapted, client):
    c, _ = adapted
    with_it, without = _decide(c), _decide(client)
    assert max(abs(with_it[o] - without[o]) for o in CHOICES) > 0.01, (with_it, without)
    assert sum(with_it.values()) == pytest.approx(1.0)


def test_a_role_that_shares_the_model_decides_and_speaks_without_it(adapted, client):
    c, _ = adapted
    plain, same_model = _decide(client, role="dialogue"), _decide(c, role="dialogue")
    assert same_model == pytest.approx(plain, abs=0.02)
    for who in (c, client):
        who.npc("tam", "You are Tam, a cheerful baker of Oakvale.", seed=3)
    line = "Good morning! What do you bake today?"
    assert c.say("tam", line, temperature=0.0)["text"] == client.say("tam", line, temperature=0.0)["text"]


def test_hello_names_each_roles_adapter(adapted):
    _, hello = adapted
    roles = {r["role"]: r for r in hello["models"]}
    assert roles["decision"]["lora"] == ADAPTER and roles["dialogue"]["lora"] is None
    assert roles["decision"]["name"] == roles["dialogue"]["name"] == catalog.DEFAULT_MODEL
    assert roles["decision"]["choice_temperature"] == catalog.ADAPTERS[ADAPTER].choice_temperature
    assert roles["decision"]["choice_temperature_power"] == 0.0  # the adapter's one temperature, any option count
    assert roles["dialogue"]["choice_temperature_power"] == catalog.CATALOG[catalog.DEFAULT_MODEL].choice_temperature_power


def test_hello_names_the_weights_each_roles_choices_are_scored_on(adapted, model_path):
    """The adapter's role on the model with it merged in, the other on the model's scoring copy where this CPU
    has one (``catalog.scoring_weights``), else on the file that runs."""
    _, hello = adapted
    roles = {r["role"]: r for r in hello["models"]}
    merged = merged_path(model_path, catalog.resolve_adapter(ADAPTER)[1], catalog.cache_dir())
    assert roles["decision"]["scoring_weights"] == merged.name
    assert roles["dialogue"]["scoring_weights"] == (catalog.scoring_weights(catalog.DEFAULT_MODEL) or model_path).name


def test_the_quality_bench_records_the_adapters_temperature_for_an_adapters_run(adapted):
    """Its probs are at the adapter's temperature: fitting from a report rescales them from there."""
    _, hello = adapted
    assert probs_temperature(hello["models"]) == (catalog.ADAPTERS[ADAPTER].choice_temperature, 0.0)


def test_a_cache_the_merged_weights_cannot_be_written_to_still_starts_and_decides_as_the_merged_ones(
        adapted, model_path, tmp_path):
    """A player's read-only or full cache: the adapter is applied at run time instead (choices cost more)."""
    (tmp_path / "afile").write_text("")  # no folder can be made under a file, even by root
    with Sidecar("--model", str(model_path), "--lora", f"decision={ADAPTER}",
                 env={"NPCAI_CACHE": str(tmp_path / "afile" / "cache")}) as sc, Client(sc.endpoint) as c:
        roles = {r["role"]: r for r in c.hello("pytest")["models"]}
        assert roles["decision"]["lora"] == ADAPTER
        assert roles["decision"]["scoring_weights"] == model_path.name  # the adapter applied to the file that runs
        assert _decide(c) == pytest.approx(_decide(adapted[0]), abs=0.05)
    assert "applying it at run time" in "".join(sc.stderr_tail)


@pytest.mark.parametrize("spec, needle", [
    ("decision", "give ROLE=NAME or ROLE=PATH"),
    ("villain=smollm2-135m-decision", "no model serves role 'villain'"),
    ("decision=no-such-adapter", "unknown adapter 'no-such-adapter'"),
    ("decision=/nonexistent/decision.gguf", "no such file"),
])
def test_a_bad_lora_spec_stops_the_start_in_one_line(spec, needle):
    assert_one_line_failure(run_cli("serve", "--lora", spec), needle)


@pytest.mark.parametrize("args, needle", [
    (["--lora", "decision=/nonexistent/typo.gguf"], "no such file"),
    (["--lora", "villain=smollm2-135m-decision"], "no model serves role 'villain'"),
    (["--model", "smollm2-135m", "--model", "gemma3-270m", "--lora", f"decision={ADAPTER}"],
     "is an adapter for smollm2-135m"),
    (["--model", "smollm2-135m", "--model", "no-such-model"], "unknown model 'no-such-model'"),
])
def test_a_bad_spec_stops_the_bench_before_anything_runs(tmp_path, args, needle):
    """A typo in the second model's specs used to cost the whole first pass, whose results were then lost."""
    proc = run_cli("bench", "--only", "transport", "--quick", *args, "--out", str(tmp_path / "r.json"), timeout=300)
    assert_one_line_failure(proc, needle)
    assert not (tmp_path / "r.json").exists()


def test_a_file_that_is_not_a_gguf_is_refused(tmp_path):
    bad = tmp_path / "adapter.gguf"
    bad.write_text("not a model")
    assert_one_line_failure(run_cli("serve", "--lora", f"decision={bad}"), "not a GGUF file")


def test_a_model_file_is_not_taken_for_an_adapter(model_path):
    proc = run_cli("serve", "--lora", f"decision={model_path}")
    assert_one_line_failure(proc, "expect general.type to be 'adapter'")


def test_an_adapter_for_another_model_is_refused():
    shipped = catalog.resolve_adapter(ADAPTER)[1]
    by_name = run_cli("serve", "--model", "decision=gemma3-270m", "--lora", f"decision={ADAPTER}", timeout=600)
    assert_one_line_failure(by_name, "is an adapter for smollm2-135m")
    by_path = run_cli("serve", "--model", "decision=gemma3-270m", "--lora", f"decision={shipped}", timeout=600)
    assert_one_line_failure(by_path, "model arch and LoRA arch mismatch")


GEMMA_ADAPTER = "gemma3-270m-decision"


def test_gemmas_adapter_is_refused_for_a_role_smollm2_serves():
    assert_one_line_failure(run_cli("serve", "--lora", f"decision={GEMMA_ADAPTER}"),
                            f"{GEMMA_ADAPTER} is an adapter for gemma3-270m")


@pytest.mark.skipif(os.environ.get("NPCAI_SKIP_SECOND_MODEL") == "1", reason="second model not wanted")
def test_gemmas_adapter_loads_by_name_for_gemmas_role_only(model_path):
    roles = ("--model", "dialogue=smollm2-135m", "--model", "decision=gemma3-270m", "--model", "rival=gemma3-270m")
    with Sidecar(*roles, "--lora", f"decision={GEMMA_ADAPTER}") as sc, Client(sc.endpoint) as c:
        described = {r["role"]: r for r in c.hello("pytest")["models"]}
        assert described["decision"]["lora"] == GEMMA_ADAPTER and described["rival"]["lora"] is None
        assert described["decision"]["name"] == described["rival"]["name"] == "gemma3-270m"
        assert described["decision"]["choice_temperature"] == catalog.ADAPTERS[GEMMA_ADAPTER].choice_temperature
        adapted, plain = _decide(c), _decide(c, role="rival")  # one model, its adapter on one role
    assert max(abs(adapted[o] - plain[o]) for o in CHOICES) > 0.01, (adapted, plain)
    assert sum(adapted.values()) == pytest.approx(1.0)


def test_the_paired_comparison_counts_only_the_items_that_changed():
    def rec(i: int, right: bool) -> dict:
        return {"id": f"q{i}", "label": 0, "probs": [0.9, 0.1] if right else [0.1, 0.9]}

    before = [rec(i, i < 5) for i in range(10)]
    after = [rec(i, i < 3 or i >= 8) for i in range(10)]  # loses q3, q4; gains q8, q9
    assert paired(before, after) == (2, 2, 1.0)
    gained, lost, p = paired([rec(i, False) for i in range(10)], [rec(i, True) for i in range(10)])
    assert (gained, lost) == (10, 0) and p == pytest.approx(2 / 2 ** 10)
