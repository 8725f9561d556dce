"""One JSON loader for everything that arrives from outside: webhook bodies, the push API, admin
request bodies, Notion's handshake.

``json.loads`` as it comes answers some hostile bodies with errors nobody catches (a
``RecursionError`` on ``[[[[...`` 100,000 deep), and accepts values we cannot store (``NaN``,
``1e400`` read as infinity, ``"\\u0000"``, a lone surrogate ``"\\ud800"``: Postgres refuses the
last two in text and JSONB). ``loads`` checks the nesting depth before parsing, refuses
non-finite numbers, and, unless told otherwise, strings Postgres cannot hold; every refusal is a
``BadJSON`` (a ``ValueError``) whose message says what is wrong, for a 400.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Deepest nesting of arrays and objects accepted. Real webhook payloads nest less than 10
#: deep (Jira's ADF documents about 8); Python's parser gives up near 1,000.
MAX_DEPTH = 64

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every byte that is not a bracket
_PAIR = re.compile(rb"[\[{][\]}]")  # an innermost pair, once everything else is gone


class BadJSON(ValueError):
    """The body is not JSON we accept; the message says why, in a form fit for a 400."""


def depth(raw: bytes, limit: int = MAX_DEPTH) -> int:
    """The deepest nesting of ``[``/``{`` in ``raw`` (brackets inside strings not counted), or
    any number above ``limit`` once it is known to exceed it.

    A scan of the bytes, no parse: it runs before the parser so that a hostile body never
    reaches the parser's recursion. Each pass (a regex in C) peels off the innermost level of
    brackets, so a body costs at most ``limit + 1`` linear passes. Unclosed brackets count
    as levels; stray closers do not (the parser refuses both).
    """
    outside = _STRINGS.sub(b"", raw).translate(None, _BRACKETS)
    level = 0
    while outside and level <= limit:
        peeled = _PAIR.sub(b"", outside)
        if len(peeled) == len(outside):  # no pair left: what remains is unbalanced
            return level + outside.count(b"[") + outside.count(b"{")
        outside, level = peeled, level + 1
    return level


def storable(text: str) -> str | None:
    """None when Postgres can store ``text``; else what is wrong with it."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def _constant(name: str) -> Any:
    raise BadJSON(f"{name} is not a number JSON allows")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(f"number {text[:40]} is out of range")
    return value


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH, strict_strings: bool = True,
          what: str = "body") -> Any:
    """Parse ``raw`` (UTF-8 bytes or text) or raise BadJSON naming the problem.

    ``strict_strings`` (the default) also refuses NUL characters and lone surrogates in every
    key and string value, since neither can be stored in Postgres; pass False where the body
    is only read for a few fields that are checked on their own (webhooks: see ``ids``).
    """
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise BadJSON(f"{what} is not UTF-8") from None
        data = bytes(raw)
    else:
        text, data = raw, raw.encode("utf-8", "surrogatepass")
    if depth(data, max_depth) > max_depth:
        raise BadJSON(f"{what} nests deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float)
    except BadJSON as exc:
        raise BadJSON(f"{what}: {exc}") from None
    except RecursionError:  # not reachable after the depth check; kept as a last guard
        raise BadJSON(f"{what} nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing a 5,000-digit number
        raise BadJSON(f"{what} is not valid JSON: {exc}") from None
    if strict_strings and (_SUSPECT.search(data) or isinstance(raw, str)):
        problem = _first_unstorable(value)
        if problem:
            raise BadJSON(f"{what}: {problem}")
    return value


#: Valid UTF-8 bytes can only carry a NUL or a lone surrogate into a string as an escape.
_SUSPECT = re.compile(rb"\\u(?:0000|d[89a-f])", re.IGNORECASE)


def _short(path: str) -> str:
    return repr(path if len(path) <= 80 else path[:77] + "...")


def _first_unstorable(value: Any) -> str | None:
    """The first string (key or value) Postgres cannot hold, as ``'path' contains ...``."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if problem := storable(item):
                return f"{_short(where)} {problem}" if where else f"the string {problem}"
        elif isinstance(item, dict):
            for key, sub in item.items():
                if problem := storable(key):
                    return f"a key in {_short(where)} {problem}" if where else f"a key {problem}"
                stack.append((sub, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((sub, f"{where}[{n}]") for n, sub in enumerate(item))
    return None
