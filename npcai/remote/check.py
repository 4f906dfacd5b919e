"""A remote decision's constraint, checked here on both sides of the engine.

Before: the schema, grammar or regex is compiled as a local role compiles it (``ConstraintCompiler``,
over a vocabulary of single bytes, since the engine's own is not here), so one that does not compile
is ``bad_request`` and never reaches the engine: llama-cpp-python's server dies of a GBNF grammar
that does not parse, for every client at once.

After: the engine's answer is checked against it, since an engine may ignore or half-honour a guided
decoding field (a proxy that drops it, a version that reads another name). A text must match the
grammar or regex whole, walked byte by byte through the same compiled matcher; a schema's value must
validate against the schema as sent (jsonschema: a value's keys may come in any order, which a
matcher that generates them in order would refuse). An answer that does not is the fallback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
from llguidance import LLTokenizer
from llguidance._tokenizer import TokenizerWrapper

from npcai.errors import TooLarge
from npcai.model.constraints import Constraint, ConstraintCompiler

_EOS = 256  # the one token past the 256 bytes


class _Bytes:
    """A tokenizer whose tokens are the 256 bytes (and an end token): a text is its UTF-8 bytes."""

    eos_token_id = _EOS
    bos_token_id = None
    tokens: ClassVar[list[bytes]] = [bytes([b]) for b in range(256)] + [b""]
    special_token_ids: ClassVar[list[int]] = [_EOS]

    def __call__(self, text: bytes | str) -> list[int]:
        return list(text.encode() if isinstance(text, str) else text)


class Checker:
    """Compiles a remote decision's constraint, then judges the engine's answer by it."""

    def __init__(self, grammar_dir: Path):
        self.compiler = ConstraintCompiler(LLTokenizer(TokenizerWrapper(_Bytes())), grammar_dir)

    async def compile(self, fields: dict[str, Any]) -> tuple[str, str, Constraint]:
        """(kind, source, compiled) for a decide's schema, grammar or regex: BadRequest or TooLarge as locally.
        The compiler's worker does the work; the loop goes on meanwhile."""
        kind, source = self.compiler.source_for(fields)
        pending = asyncio.wrap_future(self.compiler.submit(kind, source))
        try:  # shielded: the compile finishes (and is cached) even when this request is cancelled
            compiled = await asyncio.wait_for(asyncio.shield(pending), self.compiler.compile_timeout)
        except asyncio.TimeoutError:
            raise TooLarge(f"constraint took over {self.compiler.compile_timeout:.1f} s to compile") from None
        return kind, source, compiled

    @staticmethod
    def value(compiled: Constraint, fields: dict[str, Any], text: str) -> tuple[bool, Any]:
        """(whether ``text`` is a valid answer, its value): a schema's JSON valid against ``fields["schema"]``,
        else a text the grammar or regex matches whole."""
        walker = compiled.start()
        if compiled.kind == "schema":
            try:
                value = walker.value(text)
            except ValueError:
                return False, None
            schema = fields["schema"]
            try:
                return jsonschema.validators.validator_for(schema)(schema).is_valid(value), value
            except Exception:  # noqa: BLE001 (jsonschema has several errors for a schema it cannot apply: unproven)
                return False, None
        for byte in text.encode():
            if not walker.consume(byte):
                return False, None
        return walker.accepting, text

    def close(self) -> None:
        self.compiler.close()
