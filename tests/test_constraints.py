"""Schema compilation on the default model's vocabulary: objects are closed to unlisted keys only where
that cannot clash with composition, and whatever plain llguidance compiles, npcai compiles too."""

from __future__ import annotations

import json

import numpy as np
import pytest
from llguidance import LLMatcher
from llguidance.llamacpp import lltokenizer_from_vocab
from support import ROOT, shared_data

from npcai.errors import NpcaiError
from npcai.model import penalties
from npcai.model.constraints import MAX_SOURCE_BYTES, ConstraintCompiler

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # llama_cpp's, once per vocabulary entry


@pytest.fixture(scope="module")
def compiler(model):
    c = ConstraintCompiler(lltokenizer_from_vocab(model.vocab, n_vocab=model.n_vocab), ROOT / "grammars")
    yield c
    c.close()


def _takes(compiler: ConstraintCompiler, schema: dict, text: str) -> bool:
    """Whether constrained decoding can produce ``text`` (and stop there) under ``schema``."""
    state = compiler.compile({"schema": schema}).start()
    tokens = compiler.tokenizer.tokenize_str(text)
    return all(state.consume(t) for t in tokens) and state.accepting


def _regex_takes(compiler: ConstraintCompiler, regex: str, text: str) -> bool:
    state = compiler.compile({"regex": regex}).start()
    return all(state.consume(t) for t in compiler.tokenizer.tokenize_str(text)) and state.accepting


@pytest.mark.parametrize("regex, text, taken", [
    ("(north|south) [0-9]{1,2}", "north 12", True),
    ("(north|south) [0-9]{1,2}", "north 123", False),  # the whole answer matches, not a prefix of it
    ("(north|south) [0-9]{1,2}", "go north 1", False),  # nor a part of it
    ("a/b", "a/b", True),  # a slash is the regex's own, not the end of a Lark /regex/
    (r"a\\", "a\\", True),  # an escaped backslash
])
def test_a_regex_constrains_the_whole_answer(compiler, regex, text, taken):
    assert _regex_takes(compiler, regex, text) is taken


@pytest.mark.parametrize("regex, cause", [
    ("(north", "unclosed group"),
    ("(?=a)b", "look-around"),
    (r"(a)\1", "backreferences"),
    ("north\\", "lone backslash"),  # llguidance would drop it and compile 'north'
])
def test_a_regex_that_does_not_compile_is_a_bad_request_in_one_line(compiler, regex, cause):
    with pytest.raises(NpcaiError) as refused:
        compiler.compile({"regex": regex})
    assert refused.value.code == "bad_request" and cause in refused.value.message
    assert "\n" not in refused.value.message


def test_an_object_that_lists_its_keys_is_closed_to_others(compiler):
    schema = {"type": "object", "properties": {"mood": {"enum": ["calm", "angry"]}}}
    assert _takes(compiler, schema, '{"mood": "calm"}')
    assert not _takes(compiler, schema, '{"mood": "calm", "gold": 5}')


COMPOSED = {
    "$ref beside type object": (
        {"$ref": "#/$defs/Guard", "type": "object",
         "$defs": {"Guard": {"properties": {"name": {"type": "string"}}, "required": ["name"]}}},
        '{"name": "Brom"}'),
    "allOf of object parts": (
        {"allOf": [{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                   {"type": "object", "properties": {"gold": {"type": "integer"}}, "required": ["gold"]}]},
        '{"name": "Brom", "gold": 5}'),
    "required keys not in properties": (
        {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name", "gold"]},
        '{"name": "Brom", "gold": 5}'),
    "allOf of $refs": (
        {"type": "object", "required": ["kind", "name"],
         "allOf": [{"$ref": "#/$defs/Named"}, {"oneOf": [{"$ref": "#/$defs/Smith"}, {"$ref": "#/$defs/Guard"}]}],
         "$defs": {"Named": {"type": "object", "properties": {"name": {"type": "string"}}},
                   "Smith": {"type": "object", "properties": {"kind": {"const": "smith"}}},
                   "Guard": {"type": "object", "properties": {"kind": {"const": "guard"}}}}},
        '{"name": "Brom", "kind": "smith"}'),
}


@pytest.mark.parametrize("schema, instance", COMPOSED.values(), ids=COMPOSED.keys())
def test_objects_composed_with_other_schemas_are_left_open_and_compile(compiler, schema, instance):
    assert _takes(compiler, schema, instance)


# The sample's schemas that plain llguidance compiles but npcai refuses, by design: over
# MAX_SOURCE_BYTES (64 KiB of JSON), the size limit on a request's schema (docs/PROTOCOL.md).
TOO_LARGE_BY_DESIGN = {"Kubernetes/kb_236_Normalized", "Kubernetes/kb_684_Normalized",
                       "Kubernetes/kb_742_Normalized", "Kubernetes/kb_806_Normalized"}
# Measured on the sample: npcai compiles 104 of the 120 (plain llguidance 97). Fewer is a regression.
COMPILED_AT_LEAST = 104


def test_what_plain_llguidance_compiles_npcai_compiles_too_on_120_real_world_schemas(compiler):
    """JSONSchemaBench (github.com/guidance-ai/jsonschemabench): 12 schemas from each of 10 collections,
    read in place from the shared data folder (never copied). Compiling needs only the default model's
    vocabulary (no decoding): about a second for all 120. npcai refuses a schema over MAX_SOURCE_BYTES
    by design; every other schema plain llguidance compiles, npcai compiles too."""
    sample = json.loads((shared_data("schemas") / "jsonschemabench_sample.json").read_text())["schemas"]
    assert len(sample) == 120
    refused, too_large, compared, compiled = [], set(), 0, 0
    for entry in sample:
        text = json.dumps(entry["schema"])
        try:
            compiler.compile({"schema": entry["schema"]})
            compiled += 1
            npcai_error = None
        except NpcaiError as err:
            npcai_error = err
        try:
            plain = LLMatcher(compiler.tokenizer, LLMatcher.grammar_from_json_schema(text), log_level=0)
        except ValueError:
            continue
        if plain.is_error():
            continue
        compared += 1
        if npcai_error is None:
            continue
        if npcai_error.code == "too_large" and len(text.encode()) > MAX_SOURCE_BYTES:
            too_large.add(entry["id"])
        else:
            refused.append(f"{entry['id']}: {npcai_error.code}: {npcai_error.message}")
    assert not refused, "\n".join(refused)
    assert too_large == TOO_LARGE_BY_DESIGN, sorted(too_large)
    assert compiled >= COMPILED_AT_LEAST, f"npcai compiles {compiled} of 120 schemas, was {COMPILED_AT_LEAST}"
    assert compared >= 97, compared


def _allowed_after(compiler: ConstraintCompiler, schema: dict, text: str, way_out: np.ndarray) -> list[bytes]:
    """The pieces the grammar allows after ``text``, once ``way_out`` is preferred (``penalties.prefer``)."""
    state = compiler.compile({"schema": schema}).start()
    assert all(state.consume(t) for t in compiler.tokenizer.tokenize_str(text))
    mask = np.zeros(len(way_out), dtype=np.int32)
    state.fill_mask(mask)
    penalties.prefer(mask, way_out)
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")
    return [compiler.tokenizer.decode_bytes([t]) for t in np.flatnonzero(bits)]


def test_the_way_out_closes_a_list_or_ends_a_string_where_the_schema_allows(compiler, model):
    """Past the soft limit the job prefers, outside a string, tokens that start with ] or }, and inside one,
    tokens that end it: on a real grammar that leaves only ways to close, never more of the value."""
    pieces = model.all_pieces()
    closers = penalties.token_mask(model.n_vocab, [t for t, p in enumerate(pieces) if penalties.json_closer(p)])
    quotes = penalties.token_mask(model.n_vocab, [t for t, p in enumerate(pieces) if penalties.json_quotes(p)[0]])
    tally = {"type": "array", "items": {"type": "integer"}, "maxItems": 60}
    after = _allowed_after(compiler, tally, "[1, 2", closers)
    assert after and all(p.startswith(b"]") for p in after), after[:10]
    named = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}}, "required": ["name"]}
    after = _allowed_after(compiler, named, '{"name": "Bro', quotes)
    assert after and all(penalties.json_quotes(p)[0] for p in after), after[:10]
    # where the schema allows no way out yet (minItems), the mask is left as it was
    two = {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 5}
    assert any(p[:1].isdigit() for p in _allowed_after(compiler, two, "[1, 2", closers))
