"""Which of a table's model names a mistyped or shortened one may mean, for the hint in an error."""
from __future__ import annotations

import difflib
import re


def close_models(name: str, models: list[str], n: int = 3) -> list[str]:
    """The models a mistyped or shortened name may mean: the same up to case; else those it is part
    of, those it begins first, punctuation aside (`gpt-4` or `gpt4` for `gpt-4-1106-preview`, which
    spelling distance misses); else the nearest by spelling."""
    def bare(s: str) -> str:
        return re.sub(r"[^0-9a-z]", "", s.casefold())

    key = bare(name)
    same = [m for m in models if m.casefold() == name.casefold()]
    part = sorted((m for m in models if key and key in bare(m)), key=lambda m: (not bare(m).startswith(key), len(m), m))
    return (same or part or difflib.get_close_matches(name, models, n=n))[:n]
