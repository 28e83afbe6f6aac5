"""JSON from clients and upstreams, with lone UTF-16 surrogates replaced.

JSON may escape half of a surrogate pair ("\\ud83d" without its partner: JavaScript's string
slicing cuts an emoji so, and JSON.stringify writes the half; some servers split one at a token
boundary). `json.loads` accepts it, but the resulting str cannot be encoded as UTF-8, so hashing
the request for the cache, logging it or sending an answer would fail, and an agent that replays
its history would fail on every later turn. Each lone half becomes U+FFFD on the way in.

The same half may come unescaped, as the three bytes UTF-8 reserves for no character (ED A0..BF
xx: Java's and CESU-8's encoders write surrogates so), which `json.loads` also lets through
(it decodes bytes with "surrogatepass"); it is replaced alike, and such a pair becomes the
character it encodes.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

# Two searches, not one alternation: each keeps the regex engine's fast scan for its first
# character, which an alternation loses (9x slower on a 2 MB body).
_ESCAPED_TEXT, _RAW_TEXT = re.compile(r"\\u[dD][89a-fA-F]"), re.compile(r"[\ud800-\udfff]")
_ESCAPED_BYTES, _RAW_BYTES = re.compile(rb"\\u[dD][89a-fA-F]"), re.compile(rb"\xed[\xa0-\xbf]")
MAX_DEPTH = 256  # nesting a surrogate walk follows; real requests nest a few dozen levels at most


def loads(raw: str | bytes, *, finite: bool = False) -> Any:
    """`json.loads`, and where the text holds a surrogate, every lone one replaced. Too deep
    to walk is a ValueError, as invalid JSON is; so, with `finite`, is a number that is no
    finite double (NaN and Infinity are Python's extensions of JSON; 1e999 has no double)."""
    value = json.loads(raw, parse_constant=_non_finite, parse_float=_finite_float) if finite else json.loads(raw)
    escaped, unescaped = (_ESCAPED_TEXT, _RAW_TEXT) if isinstance(raw, str) else (_ESCAPED_BYTES, _RAW_BYTES)
    if not (escaped.search(raw) or unescaped.search(raw)):
        return value
    try:
        # json.loads joins a valid pair into one character: only lone halves are left to replace.
        return _replace_lone(value)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _non_finite(constant: str) -> float:
    raise ValueError(f"{constant}: non-finite numbers are not JSON")


def _finite_float(text: str) -> float:
    # A client's 1e999 would be forwarded as Infinity, which no upstream parses as JSON.
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is beyond a double's range: non-finite numbers are not JSON")
    return number


def _replace_lone(value: Any, depth: int = 0) -> Any:
    # A fixed bound, not the interpreter's recursion limit, which libraries raise on import
    # (torch sets 3000): where "too deep" starts must not depend on what was imported before.
    if depth > MAX_DEPTH:
        raise ValueError("JSON nested too deeply")
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_replace_lone(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_replace_lone(k, depth + 1): _replace_lone(v, depth + 1) for k, v in value.items()}
    return value
