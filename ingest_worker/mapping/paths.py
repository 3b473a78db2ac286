"""Path expressions that select values from a JSON document.

A path is a chain of segments separated by dots and starts at the document root:

- `name`: the value of key `name` of an object.
- `*`: every value of an object in document order, or every element of an array.
- `["odd.key"]` or `['odd.key']`: a key that contains dots, brackets, quotes,
  whitespace or `*`. Inside the quotes a backslash escapes the quote or itself.
- `[*]`: every element of an array, flattened into the result.
- `[N]`: one element of an array. A negative N counts from the end.

A segment is a bare name, `*` or nothing, followed by any number of brackets, so
`a[*][*]`, `a["b"][0]`, `a.["b"]` and `[0]` are all valid. A path is parsed once
by `compile_path`. A missing key, a key on a non-object, an index out of range or
an index on a non-array selects nothing and is never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CompiledPath", "PathSyntaxError", "compile_path"]

# Characters that end a bare name or cannot appear in one.
_NAME_TERMINATORS = frozenset(".[")
_NAME_FORBIDDEN = frozenset("]\"'*")
_DIGITS = frozenset("0123456789")


class PathSyntaxError(ValueError):
    """A path expression is invalid.

    The message names the path and the 0-based character position of the error.
    """

    def __init__(self, path: str, position: int, reason: str) -> None:
        super().__init__(f"invalid path {path!r} at position {position}: {reason}")
        self.path = path
        self.position = position
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Key:
    name: str

    def apply(self, values: list[Any]) -> list[Any]:
        name = self.name
        return [v[name] for v in values if isinstance(v, dict) and name in v]


@dataclass(frozen=True, slots=True)
class _Index:
    index: int

    def apply(self, values: list[Any]) -> list[Any]:
        index = self.index
        selected = []
        for value in values:
            if isinstance(value, list) and -len(value) <= index < len(value):
                selected.append(value[index])
        return selected


@dataclass(frozen=True, slots=True)
class _EachElement:
    def apply(self, values: list[Any]) -> list[Any]:
        selected: list[Any] = []
        for value in values:
            if isinstance(value, list):
                selected.extend(value)
        return selected


@dataclass(frozen=True, slots=True)
class _EachValue:
    def apply(self, values: list[Any]) -> list[Any]:
        selected: list[Any] = []
        for value in values:
            if isinstance(value, dict):
                selected.extend(value.values())
            elif isinstance(value, list):
                selected.extend(value)
        return selected


_Step = _Key | _Index | _EachElement | _EachValue


@dataclass(frozen=True, slots=True)
class CompiledPath:
    """A parsed path; `text` is the expression as written."""

    text: str
    _steps: tuple[_Step, ...] = field(repr=False, compare=False)
    # The keys of a path made only of keys, which `resolve` walks without lists.
    _keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    def resolve(self, document: Any) -> list[Any]:
        """Return every value that the path selects, in document order.

        The values are the document's own objects, not copies.
        """
        if self._keys is not None:
            value = document
            for key in self._keys:
                if not isinstance(value, dict) or key not in value:
                    return []
                value = value[key]
            return [value]
        values = [document]
        for step in self._steps:
            values = step.apply(values)
            if not values:
                return values
        return values

    def __str__(self) -> str:
        return self.text


def compile_path(text: str) -> CompiledPath:
    """Parse a path expression, raising PathSyntaxError when it is invalid."""
    if not isinstance(text, str):
        raise TypeError(f"a path must be a string, got {type(text).__name__}")
    if not text:
        raise PathSyntaxError(text, 0, "the path is empty")
    steps = _Parser(text).parse()
    keys = None
    if all(isinstance(step, _Key) for step in steps):
        keys = tuple(step.name for step in steps if isinstance(step, _Key))
    return CompiledPath(text, steps, keys)


class _Parser:
    """Single-pass parser over the characters of one path."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def fail(self, reason: str, position: int | None = None) -> PathSyntaxError:
        where = self.position if position is None else position
        return PathSyntaxError(self.text, where, reason)

    def parse(self) -> tuple[_Step, ...]:
        steps: list[_Step] = []
        while True:
            self.parse_segment(steps)
            if self.position == len(self.text):
                return tuple(steps)
            # parse_segment stops only at a dot or at the end of the text.
            self.position += 1

    def parse_segment(self, steps: list[_Step]) -> None:
        text = self.text
        start = self.position
        if start < len(text) and text[start] == "*":
            self.position += 1
            steps.append(_EachValue())
            if self.position < len(text) and text[self.position] not in ".[":
                raise self.fail(
                    f"unexpected {text[self.position]!r} after '*'; "
                    "'*' must be a whole segment"
                )
        else:
            name = self.parse_name()
            if name:
                steps.append(_Key(name))
        while self.position < len(text) and text[self.position] == "[":
            steps.append(self.parse_bracket())
        if self.position == start:
            raise self.fail("empty segment; remove the extra dot or add a key")
        if self.position < len(text) and text[self.position] != ".":
            char = text[self.position]
            raise self.fail(f"unexpected {char!r} after ']'; expected '.' or '['")

    def parse_name(self) -> str:
        text = self.text
        start = self.position
        end = start
        while end < len(text) and text[end] not in _NAME_TERMINATORS:
            char = text[end]
            if char in _NAME_FORBIDDEN or char.isspace():
                self.position = end
                raise self.fail(
                    f"unexpected {char!r} in a key; write keys that contain it as "
                    '["..."]'
                )
            end += 1
        self.position = end
        return text[start:end]

    def parse_bracket(self) -> _Step:
        text = self.text
        opening = self.position
        self.position += 1
        if self.position >= len(text):
            raise self.fail("unterminated '['", opening)
        char = text[self.position]
        step: _Step
        if char == "*":
            self.position += 1
            step = _EachElement()
        elif char in "\"'":
            step = _Key(self.parse_quoted(opening))
        elif char == "-" or char in _DIGITS:
            start = self.position
            step = _Index(self.parse_index())
            if self.position < len(text) and text[self.position] != "]":
                raise self.fail("an index must be an integer such as 0 or -1", start)
        else:
            raise self.fail(
                f"unexpected {char!r} after '['; expected '*', an integer index "
                "or a quoted key"
            )
        if self.position >= len(text):
            raise self.fail("unterminated '['", opening)
        if text[self.position] != "]":
            raise self.fail(f"expected ']' but found {text[self.position]!r}")
        self.position += 1
        return step

    def parse_quoted(self, opening: int) -> str:
        text = self.text
        quote = text[self.position]
        self.position += 1
        chars: list[str] = []
        while self.position < len(text):
            char = text[self.position]
            if char == quote:
                self.position += 1
                return "".join(chars)
            if char == "\\":
                escaped = text[self.position + 1 : self.position + 2]
                if escaped not in (quote, "\\"):
                    sequence = "\\" + escaped
                    raise self.fail(
                        f"invalid escape {sequence!r}; only a backslash before "
                        f"{quote} or before another backslash is allowed"
                    )
                chars.append(escaped)
                self.position += 2
                continue
            chars.append(char)
            self.position += 1
        raise self.fail(f"unterminated quoted key; add the closing {quote}", opening)

    def parse_index(self) -> int:
        text = self.text
        start = self.position
        if text[start] == "-":
            self.position += 1
        digits_start = self.position
        while self.position < len(text) and text[self.position] in _DIGITS:
            self.position += 1
        if self.position == digits_start:
            raise self.fail("an index must be an integer such as 0 or -1", start)
        return int(text[start : self.position])
