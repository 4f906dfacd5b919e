"""Keys a JSON answer would write twice in one object.

llguidance's JSON grammar cannot forbid a repeated key in an object open to more properties
(``additionalProperties``, ``patternProperties``): tiny models write ``{"name": 1, "age": 2, "name": 3, …}``,
and ``json.loads`` keeps the last, so the value has fewer properties than the text (``minProperties``
broken) and the loop runs on to the cap. ``KeyTracker`` follows the answer's bytes as they are
written: the objects open around it, the keys each already has, and the key being written, so that
the tokens that would close that key as a repeat can be taken out of the mask before sampling. It
also says whether the text ends inside a string (where the string guard and the way out look).
"""

from __future__ import annotations

_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPEN_OBJECT, _OPEN_ARRAY, _CLOSERS = 0x7B, 0x5B, (0x7D, 0x5D)
_COMMA, _COLON = 0x2C, 0x3A


class KeyTracker:
    """The structure of a JSON text written so far, as far as its objects' keys go."""

    def __init__(self) -> None:
        self._open: list[set[bytes] | None] = []  # per open container: an object's keys, or None for an array
        self._want_key = False  # the next string in this object is a key
        self._in_string = False
        self._escaped = False
        self._key: bytearray | None = None  # the key being written (its raw bytes), while inside one
        self.repeated = False  # a key was written that its object already had

    @property
    def in_string(self) -> bool:
        """The text so far ends inside a string (a key or a value)."""
        return self._in_string

    def feed(self, text: bytes) -> int:
        """Follow ``text``; returns how many unescaped double quotes it holds (each starts or ends a string)."""
        quotes = 0
        for byte in text:
            if self._in_string:
                quotes += self._string_byte(byte)
            elif byte == _QUOTE:
                quotes += 1
                self._in_string = True
                if self._want_key and self._open and self._open[-1] is not None:
                    self._key = bytearray()
            elif byte == _OPEN_OBJECT:
                self._open.append(set())
                self._want_key = True
            elif byte == _OPEN_ARRAY:
                self._open.append(None)
                self._want_key = False
            elif byte in _CLOSERS:
                if self._open:
                    self._open.pop()
                self._want_key = False
            elif byte == _COMMA:
                self._want_key = bool(self._open) and self._open[-1] is not None
            elif byte == _COLON:
                self._want_key = False
        return quotes

    def _string_byte(self, byte: int) -> bool:
        """One byte inside a string; whether it was the quote that ends it."""
        if self._escaped:
            self._escaped = False
        elif byte == _BACKSLASH:
            self._escaped = True
        elif byte == _QUOTE:
            self._in_string = False
            if self._key is not None:
                key = bytes(self._key)
                self.repeated |= key in self._open[-1]
                self._open[-1].add(key)
                self._key = None
                self._want_key = False
            return True
        if self._key is not None:
            self._key.append(byte)
        return False

    def keys_here(self) -> set[bytes]:
        """The keys of the object the text is in (none in an array, or outside every object)."""
        return (self._open[-1] or set()) if self._open else set()

    def would_repeat(self, text: bytes) -> bool:
        """Whether writing ``text`` next would write a key its object already has (a token may close one
        key and write a whole other one: ``", "name"``)."""
        probe = KeyTracker()
        probe._open = [set(keys) if keys is not None else None for keys in self._open]
        probe._want_key, probe._in_string, probe._escaped = self._want_key, self._in_string, self._escaped
        probe._key = bytearray(self._key) if self._key is not None else None
        probe.feed(text)
        return probe.repeated

    def repeat_endings(self) -> tuple[bytes, ...]:
        """While a key is being written: the bytes that would end it as a key its object already has,
        closing quote included (a token starting with one of them writes a repeat). Keys written with
        different escapes for the same characters are not matched; the answer's parse refuses those."""
        if self._key is None or self._escaped:
            return ()
        so_far = bytes(self._key)
        return tuple(have[len(so_far):] + b'"' for have in self._open[-1] if have.startswith(so_far))
