"""Constraints: compile a decision's schema, grammar or regex once, then mask tokens per step.

Compilation uses llguidance over the model's own vocabulary. It is bounded in input
(source bytes, GBNF rules), in work (parser fuel limits) and in wall time: everything
past a few cheap checks, GBNF conversion included, runs on a worker thread; the engine
keeps stepping other requests and gives up on the constraint after ``compile_timeout``.
Constraints are cached by their source text, failures too, so a schema sent with every
decision costs its compilation once. Each request walks its own copy of the matcher;
after every token the matcher also reports forced tokens ("jump-forward"), which
the runtime appends without sampling.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from llguidance import LLMatcher, LLParserLimits, LLTokenizer
from llguidance.gbnf_to_lark import any_to_lark

from npcai.errors import BadRequest, NpcaiError, TooLarge

MAX_SOURCE_BYTES = 64 * 1024
# GBNF-to-Lark conversion (pure Python) grows with the square of a chain of rules: 128
# rules convert in about 25 ms; shipped grammars have a handful.
MAX_GBNF_RULES = 128
_RULE = re.compile(r"::=")
_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.gbnf)?$")

# Tighter than llguidance's defaults: an NPC decision never needs a huge grammar, and
# a pathological one must fail fast instead of stalling the sidecar.
_LIMITS = dict(initial_lexer_fuel=300_000, step_lexer_fuel=100_000, step_max_items=20_000,
               max_lexer_states=50_000, max_grammar_size=50_000)


class Constraint:
    """A compiled grammar; ``start()`` gives a request its own walker."""

    def __init__(self, matcher: LLMatcher, kind: str, *, approximate: bool = False):
        self._template = matcher
        self.kind = kind  # "schema", "grammar" or "regex": how the matched text becomes a value
        self.approximate = approximate  # a schema with oneOf, compiled as anyOf: its answers are checked (holds)
        self._exact: Any = None  # that schema's own validator
        self._exact_for: str | None = None

    def start(self) -> "ConstraintState":
        return ConstraintState(self._template.deep_copy(), self.kind)

    def holds(self, value: Any, schema: Any) -> bool:
        """Whether a value the grammar accepted is valid against the ``schema`` as sent. Only ``oneOf`` asks
        for more than the grammar: it is compiled as ``anyOf``, so a value may match two branches."""
        if not self.approximate:
            return True
        source = json.dumps(schema, sort_keys=True)
        try:
            if self._exact_for != source:
                self._exact, self._exact_for = jsonschema.validators.validator_for(schema)(schema), source
            return bool(self._exact.is_valid(value))
        except Exception:  # noqa: BLE001 (jsonschema has several errors for a schema it cannot apply: the grammar's word stands)
            return True


class ConstraintState:
    """One request's position in a constraint."""

    def __init__(self, matcher: LLMatcher, kind: str):
        self._m = matcher
        self.kind = kind

    def fill_mask(self, out: np.ndarray) -> None:
        """Write the allowed-token bitmask (int32 words, 32 tokens each) into ``out``."""
        self._m.unsafe_compute_mask_ptr(out.ctypes.data, out.nbytes)

    def consume(self, token: int) -> bool:
        return self._m.consume_token(token)

    def forced(self) -> list[int]:
        """Tokens that are the only legal continuation, in canonical tokenization."""
        return self._m.compute_ff_tokens()

    @property
    def stopped(self) -> bool:
        """The grammar is complete and admits nothing more."""
        return self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._m.is_accepting()

    @property
    def error(self) -> str | None:
        return self._m.get_error() if self._m.is_error() else None

    def value(self, text: str) -> Any:
        """The decision's value for the matched text; ValueError for JSON with a key written twice in one
        object, which no grammar here rules out (``json_keys``) and which would not read as written."""
        return json.loads(text, object_pairs_hook=_once_each) if self.kind == "schema" else text


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key is written twice in one object")
    return out


class ConstraintCompiler:
    """Compiles and caches constraints for one model's vocabulary."""

    def __init__(self, tokenizer: LLTokenizer, grammar_dir: Path, compile_timeout: float = 2.0,
                 cache_size: int = 128):
        self.tokenizer = tokenizer
        self.grammar_dir = Path(grammar_dir)
        self.compile_timeout = compile_timeout
        self._cache: OrderedDict[str, Constraint | NpcaiError] = OrderedDict()
        self._cache_size = cache_size
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="npcai-compile")
        self._limits = LLParserLimits(**_LIMITS, verbose_errors=False)

    def source_for(self, fields: dict[str, Any]) -> tuple[str, str]:
        """The (kind, source text) a decide request asks for, after cheap checks only.

        Raises BadRequest/TooLarge; the costly conversion happens in ``submit``'s worker.
        """
        if "schema" in fields:
            _check_size(_json(fields["schema"]), "schema")
            # Property order is generation order: keep it (no sort_keys).
            text = _json(bounded(_closed(fields["schema"])))
            _check_size(text, "schema")
            return "schema", text
        if "regex" in fields:
            _check_size(fields["regex"], "regex")
            return "regex", fields["regex"]
        grammar = fields["grammar"]
        if _NAME.match(grammar):
            path = self.grammar_dir / (grammar if grammar.endswith(".gbnf") else grammar + ".gbnf")
            if not path.is_file():
                known = ", ".join(sorted(p.stem for p in self.grammar_dir.glob("*.gbnf"))) or "none"
                raise BadRequest(f"no grammar named {grammar!r} (known: {known})")
            grammar = path.read_text()
        _check_size(grammar, "grammar")
        if "::=" not in grammar:
            raise BadRequest("grammar must be the name of a file in grammars/ or GBNF text with 'rule ::= ...'")
        rules = len(_RULE.findall(grammar))
        if rules > MAX_GBNF_RULES:
            raise TooLarge(f"grammar of {rules} rules exceeds {MAX_GBNF_RULES}")
        return "grammar", grammar

    def submit(self, kind: str, source: str) -> Future:
        """A future Constraint (or its NpcaiError); cached ones resolve at once, others compile on the worker."""
        key = kind + "\0" + source
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                fut: Future = Future()
                if isinstance(hit, Constraint):
                    fut.set_result(hit)
                else:  # a fresh exception each time: a raised one holds on to its traceback
                    fut.set_exception(type(hit)(hit.message))
                return fut
            fut = self._pending.get(key)
            if fut is None:
                fut = self._pool.submit(self._compile, key, kind, source)
                self._pending[key] = fut
            return fut

    def run_in_background(self, work) -> Future:
        """Run ``work`` on the compiler's worker thread (vocabulary scans that must not hold up start-up)."""
        return self._pool.submit(work)

    def compile(self, fields: dict[str, Any]) -> Constraint:
        """Blocking compile, for tools and tests."""
        kind, grammar = self.source_for(fields)
        return self.submit(kind, grammar).result(timeout=self.compile_timeout * 5)

    def _compile(self, key: str, kind: str, source: str) -> Constraint:
        try:
            result: Constraint | NpcaiError = Constraint(self._matcher(kind, source), kind,
                                                         approximate=kind == "schema" and "oneOf" in source)
        except NpcaiError as err:
            result = err
        except Exception as exc:  # the compiler's own failures are the caller's grammar's fault
            result = BadRequest(f"constraint does not compile: {exc}")
        with self._lock:
            self._cache[key] = result  # failures too: a bad grammar sent again costs nothing
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            self._pending.pop(key, None)
        if isinstance(result, NpcaiError):
            raise result
        return result

    def _matcher(self, kind: str, source: str) -> LLMatcher:
        if kind == "schema":
            with_patterns = _json(bounded(json.loads(source), patterns=True))
            if with_patterns != source:
                try:
                    return self._schema_matcher(with_patterns)
                except NpcaiError:  # llguidance could not intersect a pattern with a length: leave them open
                    pass
            return self._schema_matcher(source)
        if kind == "regex":
            if (len(source) - len(source.rstrip("\\"))) % 2:  # grammar_from_regex would drop it silently
                raise BadRequest("regex does not compile: it ends in a lone backslash")
            grammar = LLMatcher.grammar_from_regex(source)
            invalid = LLMatcher.validate_grammar(grammar)
            if invalid:
                raise BadRequest(f"regex does not compile: {_regex_error(invalid)}")
            return self._checked(grammar)
        try:
            grammar = LLMatcher.grammar_from_lark(any_to_lark(source))
        except Exception as exc:  # GbnfToLarkError, RecursionError, or a bare Exception for a missing rule
            raise BadRequest(f"grammar does not parse as GBNF: {exc}") from None
        return self._checked(grammar)

    def _schema_matcher(self, source: str) -> LLMatcher:
        try:
            grammar = LLMatcher.grammar_from_json_schema(
                source, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ",
                                  "coerce_one_of": True})  # oneOf as anyOf: 11 of JSONSchemaBench's 120
        except ValueError as exc:
            raise BadRequest(f"schema is not a JSON schema object: {exc}") from None
        return self._checked(grammar)

    def _checked(self, grammar: str) -> LLMatcher:
        matcher = LLMatcher(self.tokenizer, grammar, log_level=0, limits=self._limits)
        if matcher.is_error():
            raise _compile_error(matcher.get_error())
        return matcher

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _closed(schema: Any) -> Any:
    """The schema with objects closed to unlisted keys where that cannot clash with composition.

    A decision wants the listed fields, not invented ones: an object whose keys all come from its
    own ``properties`` gets ``additionalProperties: false``. An object described together with
    other schemas (``$ref``, ``allOf``, ``anyOf``/``oneOf`` beside keys of its own, ``if``/``then``/
    ``else``, ``dependentSchemas``, ``required`` keys it does not list) is left open, and so are
    its parts and the targets of such a ``$ref``: closing one part would forbid the keys another
    requires. Every value generated either way still validates against the original schema.
    """
    closable: dict[str, dict] = {}  # JSON pointer -> object to close, unless a composed $ref names it
    composed_refs: set[str] = set()

    def walk(node: Any, pointer: str, part: bool, depth: int) -> Any:
        if depth > 64:
            raise TooLarge("schema nests too deeply")
        if isinstance(node, list):
            return [walk(s, f"{pointer}/{i}", part, depth + 1) for i, s in enumerate(node)]
        if not isinstance(node, dict):
            return node
        all_of = node.get("allOf")
        shapers = len(_SHAPING.intersection(node)) + (len(all_of) - 1 if isinstance(all_of, list) and all_of else 0)
        composed = part or shapers > 1  # more than one schema describes this object
        if composed and isinstance(node.get("$ref"), str):
            composed_refs.add(node["$ref"])
        out = {k: walk(v, f"{pointer}/{_escaped(k)}", composed and k in _PARTS, depth + 1)
               if k in _SUBSCHEMAS else v for k, v in node.items()}
        for key in ("properties", "$defs", "definitions", "patternProperties"):
            if isinstance(node.get(key), dict):
                out[key] = {name: walk(sub, f"{pointer}/{key}/{_escaped(name)}", False, depth + 1)
                            for name, sub in node[key].items()}
        if not part and _keys_all_listed(node):
            closable[pointer] = out
        return out

    out = walk(schema, "#", False, 0)
    for pointer, node in closable.items():
        if pointer not in composed_refs:
            node["additionalProperties"] = False
    return out


#: Bounds for what a schema leaves unbounded: tiny models loop inside open strings, arrays and
#: numbers ("A.A.A…", ["json", "json", …], 10000000…) until the token cap. A schema's own bound
#: (maxLength, maxItems, minimum/maximum) always wins, so a request that needs more says so.
#: docs/PROTOCOL.md lists them.
MAX_STRING_LENGTH = 32
MAX_ITEMS = 4
MAX_MAGNITUDE = 10**9
_BOUNDED_FORMATS = frozenset({"date", "time", "date-time", "duration", "uuid", "ipv4", "ipv6"})


def bounded(schema: Any, depth: int = 0, *, patterns: bool = False) -> Any:
    """The schema with npcai's default bounds wherever it sets none. Every value valid under the
    bounded schema is valid under the original.

    ``patterns``: strings under a ``pattern`` are bounded too, to ``MAX_STRING_LENGTH`` past the
    pattern's shortest match (where Python's regex parser can tell it). Tiny models otherwise write
    on until the token cap where a pattern cannot end before a part they never write ("^pkg:.+@.+",
    "^test|acceptance|production$"); with a length, the grammar makes room for that part. Off by
    default, since llguidance cannot intersect every pattern with a length: the compiler tries it
    and falls back (``ConstraintCompiler._matcher``).
    """
    if depth > 64:
        raise TooLarge("schema nests too deeply")
    if isinstance(schema, list):
        return [bounded(s, depth + 1, patterns=patterns) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v, depth + 1, patterns=patterns) if k in _SUBSCHEMAS else v for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = {name: bounded(sub, depth + 1, patterns=patterns) for name, sub in schema[key].items()}
    kinds = schema.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if "enum" in schema or "const" in schema:
        return out
    if ("string" in kinds and "maxLength" not in schema and schema.get("format") not in _BOUNDED_FORMATS):
        shortest = _shortest_match(schema["pattern"]) if "pattern" in schema else 0
        if shortest is not None and (patterns or "pattern" not in schema):
            out["maxLength"] = max(MAX_STRING_LENGTH + shortest, _int_or(schema.get("minLength"), 0))
    if "array" in kinds and "maxItems" not in schema:
        out["maxItems"] = max(MAX_ITEMS, _int_or(schema.get("minItems"), 0))
    if kinds & {"integer", "number"}:
        low, high = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum",
                                                                                     schema.get("exclusiveMaximum"))
        if high is None:
            out["maximum"] = MAX_MAGNITUDE if not _number(low) or low < MAX_MAGNITUDE else low + MAX_MAGNITUDE
        if low is None:
            out["minimum"] = -MAX_MAGNITUDE if not _number(high) or high > -MAX_MAGNITUDE else high - MAX_MAGNITUDE
    return out


def _shortest_match(pattern: Any) -> int | None:
    """The length of the shortest string ``pattern`` matches, or None where Python's parser cannot
    read it (ECMA-only syntax such as ``\\p{L}``) or it is no string."""
    try:
        from re import _parser  # the stdlib's regex parser, Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as _parser
    try:
        return int(_parser.parse(pattern).getwidth()[0])
    except (re.error, TypeError, ValueError, OverflowError, RecursionError):  # no bound beats a wrong one
        return None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_or(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


# Keywords that say which keys an object has; an object described by more than one is composed.
_SHAPING = frozenset({"properties", "required", "patternProperties", "additionalProperties", "$ref", "allOf",
                      "anyOf", "oneOf", "if", "then", "else", "dependentSchemas", "dependencies"})
_PARTS = frozenset({"allOf", "anyOf", "oneOf", "then", "else"})  # subschemas of the same object


def _keys_all_listed(node: dict) -> bool:
    """An object whose keys can only be those of its own ``properties``, and that says nothing else about keys."""
    props, required = node.get("properties", {}), node.get("required", [])
    return ((node.get("type") == "object" or "properties" in node) and isinstance(props, dict)
            and isinstance(required, list) and all(isinstance(k, str) and k in props for k in required)
            and not (_SHAPING - {"properties", "required"}).intersection(node))


def _escaped(name: str) -> str:
    return str(name).replace("~", "~0").replace("/", "~1")


_SUBSCHEMAS = frozenset({"items", "prefixItems", "additionalItems", "anyOf", "oneOf", "allOf", "not", "if", "then", "else",
                         "additionalProperties", "contains"})


def _json(schema: Any) -> str:
    """The schema as JSON text. msgpack carries what JSON cannot (bin values or keys): the sender's mistake."""
    try:
        return json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"schema must hold only JSON values (maps with string keys, arrays, strings, numbers, "
                         f"booleans, nil): {exc}") from None


def _check_size(text: str, what: str) -> None:
    if len(text.encode()) > MAX_SOURCE_BYTES:
        raise TooLarge(f"{what} of {len(text.encode())} bytes exceeds {MAX_SOURCE_BYTES}")


def _regex_error(message: str) -> str:
    """llguidance's multi-line report on a bad regex, as one line ("unclosed group")."""
    lines = [ln.strip() for ln in message.splitlines()]
    cause = next((ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")), None)
    return cause or next((ln for ln in lines if ln), "invalid regex")


def _compile_error(message: str) -> NpcaiError:
    lowered = message.lower()
    if any(w in lowered for w in ("fuel", "limit", "too many", "too large", "size")):
        return TooLarge(f"constraint too complex to compile within limits: {message.splitlines()[0]}")
    return BadRequest(f"constraint does not compile: {message.splitlines()[0]}")
