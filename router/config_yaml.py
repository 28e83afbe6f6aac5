"""Reading the config file as YAML: the loader (a key written twice is an error), a syntax error
as one line naming the file, line and column, and the shapes YAML users mean that the schema in
router/config.py reads (`kind_of`): a yes/no value where none goes is an error that quotes what the
file wrote (`yes`, not Python's `True`) and says what goes there instead."""
from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import ValidationError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from router.config_checks import check_unique_keys
from router.config_errors import ConfigError, is_model, unwrap

try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml
    CParser = None

MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeys(SafeConstructor):
    """Python objects from YAML nodes, refusing a key written twice in one mapping (the second
    would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue  # `<<: *anchor`: merged keys may be overridden, as YAML means them to be
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigError(f"line {line}: a key must be a plain name, not a {type(key).__name__}")
            if not isinstance(key, str) and key_node.value:
                # Every key of this file is a name; pydantic would show `yes:` as the key `[1]`, on the file's first line.
                read = "a yes/no value" if isinstance(key, bool) else "nothing (null)" if key is None else "a number"
                raise ConfigError(f"line {line}, key {key_node.value}: YAML reads {key_node.value} as {read}, not a name: "
                                  f"write it in quotes, \"{key_node.value}\"")
            if key in seen:
                raise ConfigError(f"line {line}, key {key}: written twice in one mapping (first on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep)


class _Loader(Reader, Scanner, Parser, Composer, _UniqueKeys, Resolver):
    def __init__(self, stream: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _UniqueKeys.__init__(self)
        Resolver.__init__(self)


if CParser is not None:
    class _FastLoader(Composer, CParser, _UniqueKeys, Resolver):
        """libyaml's scanner and parser (the pure-Python ones take ~15 s for a 20,000-model
        catalog) under PyYAML's own composer: libyaml's composer recurses in C and crashes the
        process on input nested ~100,000 deep, where PyYAML's raises a RecursionError."""

        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            _UniqueKeys.__init__(self)
            Resolver.__init__(self)


def _read(loader_class: type, text: str) -> tuple[yaml.Node | None, Any]:
    loader = loader_class(text)
    try:
        tree = loader.get_single_node()
        check_unique_keys(tree)
        if tree is None:
            return None, None
        # Constructing a mapping that merges others (`<<: *anchor`) rewrites its node in place,
        # which would move the merged keys' lines to where the anchor was written.
        built = loader_class(text).get_single_node() if "<<" in text or "merge" in text else tree
        return tree, loader.construct_document(built)
    finally:
        loader.dispose()


def read_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The file's node tree (which says where each value was written) and its data, as the config
    reads it: a key written twice, or a key that is not a plain name, is an error (ConfigError),
    not a silent override. A file libyaml refuses is read again by PyYAML, whose errors name the
    problem in words the hints in router/config_errors.py know."""
    if CParser is not None:
        try:
            return _read(_FastLoader, text)
        except yaml.YAMLError:
            pass
    return _read(_Loader, text)


def syntax_error(exc: yaml.YAMLError, text: str, source: str) -> str:
    """`FILE line L, column C: not valid YAML: PROBLEM`, one line: PyYAML's own message runs to
    several and names `<unicode string>`, not the file. Where YAML noticed the problem later than
    it began (a quote never closed, a key without its colon), where it began is said too."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[:exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        where, problem = f"{source} line {line}, column {column}", f"{exc.reason} (character #x{exc.character:04x})"
    elif mark is not None:
        where = f"{source} line {mark.line + 1}, column {mark.column + 1}"
    else:
        where = source
    said = problem or " ".join(str(exc).split())
    context, began = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and began is not None and (mark is None or began.line != mark.line):
        said += f" ({context} at line {began.line + 1}, column {began.column + 1})"
    if mark is not None:
        # A double quote left open reads on to the next one, lines later, where YAML then stumbles.
        first = began.line if began is not None else mark.line
        lines = text.splitlines()[first:mark.line + 1]
        open_quote = next((first + 1 + i for i, line in enumerate(lines) if line.split(" #")[0].count('"') % 2), None)
        if open_quote is not None:
            said += f"; the quote on line {open_quote} is not closed on that line"
    return f"{where}: not valid YAML: {said}"


class YesNo(ValueError):
    """A yes/no value where something else goes: YAML 1.1 reads yes/no/on/off (any case) as
    true/false, which pydantic would take as 1 and 0. `said`, the text the file wrote, is filled
    in from the YAML tree once the error's place is known (`quote_yes_no`)."""

    def __init__(self, value: bool, goes_here: str, quote: bool = False, hint: str = ""):
        super().__init__(goes_here)
        self.value, self.goes_here, self.quote, self.hint, self.said = value, goes_here, quote, hint, None

    def __str__(self) -> str:
        read = str(self.value).lower()
        said = self.said or read
        what = f"the file says {said}, a yes/no value" if said.lower() == read else \
            f"the file says {said}, which YAML reads as {read}, a yes/no value"
        return (f"{what}; {self.goes_here} goes here" + (f': write "{said}" in quotes if you mean the word' if self.quote else "")
                + (f" ({self.hint})" if self.hint else ""))


def text_at(node: yaml.Node | None, loc: tuple) -> str | None:
    """The text the file wrote for the scalar at `loc` (keys merged in with `<<:` included); None
    where there is no such scalar."""
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        elif isinstance(node, yaml.MappingNode):
            node = _value_of(node, str(part))
        else:
            return None
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _value_of(mapping: yaml.MappingNode, key: str) -> yaml.Node | None:
    merged = []
    for k, v in mapping.value:
        if k.tag == MERGE_TAG:
            merged += v.value if isinstance(v, yaml.SequenceNode) else [v]
        elif isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    # As YAML merges them: the first mapping merged in that has the key.
    return next((found for m in merged if isinstance(m, yaml.MappingNode) and (found := _value_of(m, key)) is not None), None)


def quote_yes_no(exc: ValidationError, tree: yaml.Node | None) -> None:
    """Fill in what the file wrote for each yes/no value the validation refused. pydantic words
    an error from its cause when `errors()` is called, so the messages read after this quote it."""
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, YesNo):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]")))
            cause.said = text_at(tree, loc)


def takes_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(takes_bool(arg) for arg in get_args(annotation)) if get_origin(annotation) is not None else False


def goes_here(key: str, annotation: Any, value: bool) -> tuple[str, bool, str]:
    """What a field takes, in words; whether quoting the yes/no word would make it valid; a hint."""
    inner, kind = unwrap(annotation), kind_of(annotation)
    if kind == "section":
        said = str(value).lower()
        switch = f"to turn it {'on' if value else 'off'}: {key}: {{enabled: {said}}}" if "enabled" in inner.model_fields else ""
        return "a mapping of keys", False, switch
    if kind == "mapping":
        return "a mapping", False, ""
    item = unwrap(get_args(inner)[0]) if kind == "strings" else None
    if get_origin(item) is Literal:
        return "a list out of " + ", ".join(map(str, get_args(item))), False, ""
    if kind == "strings":
        return "a name or a list of names", True, ""
    if get_origin(inner) is Literal:
        return "one of " + ", ".join(map(str, get_args(inner))), False, ""
    if get_origin(inner) is list:
        return "a list of mappings", False, ""
    return {str: "text", int: "a whole number"}.get(inner, "a number"), inner is str, ""


def no_yes_no(value: Any) -> Any:
    # A value inside a mapping, which the check of whole fields (router/config.py) does not see: `{auto: yes}` is no 1-second TTL.
    if isinstance(value, bool):
        raise YesNo(value, "a number of seconds")
    return value


def kind_of(annotation: Any) -> str | None:
    """section (a nested model), mapping (a dict) or strings (a list of names): `X` or `X | None`."""
    inner = unwrap(annotation)
    origin, items = get_origin(inner), get_args(inner)
    if is_model(inner):
        return "section"
    if origin is dict:
        return "mapping"
    if origin in (list, tuple, frozenset, set) and items and (items[0] is str or get_origin(items[0]) is Literal):
        return "strings"
    return None
