"""Tool and response schemas in Gemini's dialect: JSON Schema as OpenAI clients write it, turned
into the OpenAPI 3.0 subset Gemini's `Schema` takes (it refuses the whole request over one keyword
it does not know)."""
from __future__ import annotations

import json
from typing import Any

from service.providers.base import UpstreamError

# Gemini's schema dialect is an OpenAPI 3.0 subset (the `Schema` of the Gemini API reference): any
# other keyword ("const", "oneOf", "additionalProperties", "$schema", "exclusiveMinimum", ...) makes
# it refuse the whole request with a 400, so only these are sent.
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "default", "example", "items", "properties",
    "required", "propertyOrdering", "anyOf", "minItems", "maxItems", "minLength", "maxLength", "pattern",
    "minimum", "maximum", "minProperties", "maxProperties",
})


MAX_SCHEMA_DEPTH = 128  # levels once `$ref`s are inlined; deeper is the request's fault, not a RecursionError


def clean_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """The schema in Gemini's dialect: `$ref`s to the schema's own `$defs` / `definitions` inlined
    (Gemini has no references), `allOf` merged, `oneOf` read as `anyOf`, a type list such as
    `["string", "null"]` written as one type and `nullable`, `const` and non-string enums (Gemini's
    enums are strings) kept as a string enum or told in the description, any other keyword dropped.
    Property *names* are data, not keywords: a parameter called `strict` stays."""
    if depth > MAX_SCHEMA_DEPTH:
        raise UpstreamError("bad_request", f"a schema nests deeper than {MAX_SCHEMA_DEPTH} levels once its $refs are inlined "
                            "(Gemini takes no references)")
    if isinstance(schema, list):
        return [clean_schema(v, defs, depth + 1) for v in schema]
    if not isinstance(schema, dict):
        return schema
    defs = {**(defs or {}), **(schema.get("$defs") or {}), **(schema.get("definitions") or {})}
    inlined, below = _inlined(schema, defs)
    if inlined is not schema:
        return clean_schema(inlined, below, depth + 1)
    schema, defs = _merged_all_of(schema, defs)
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "oneOf":
            k = "anyOf"
        if k not in _SCHEMA_KEYS:
            continue
        if k == "properties" and isinstance(v, dict):
            # `false` allows no value: a property that can never be sent is left out.
            out[k] = {name: clean_schema(_as_schema(prop), defs, depth + 1) for name, prop in v.items() if prop is not False}
        elif k == "items" and isinstance(v, list):  # a tuple: Gemini has none, its first item's type stands
            out[k] = clean_schema(_as_schema(v[0]), defs, depth + 1) if v else {}
        elif k == "items":
            out[k] = clean_schema(_as_schema(v), defs, depth + 1)
        elif k == "anyOf" and isinstance(v, list):
            out[k] = [clean_schema(_as_schema(option), defs, depth + 1) for option in v if option is not False]
        else:
            out[k] = clean_schema(v, defs, depth + 1)
    _one_type(out)
    _string_enum(out, schema.get("const", _ABSENT))
    _gemini_format(out)
    if out.get("type") == "array" and "items" not in out:
        out["items"] = {}  # Gemini refuses an array without items ("items: missing field"); {} takes any value
    return out


# The formats Gemini's Schema takes, by type; any other ("uri", "email", "uuid") refuses the request:
# "format: only 'enum' and 'date-time' are supported for STRING type".
_FORMATS = {"string": {"enum", "date-time"}, "integer": {"int32", "int64"}, "number": {"float", "double"}}


def _gemini_format(out: dict[str, Any]) -> None:
    fmt = out.get("format")
    if fmt is None or (isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type"), ())):
        return
    del out["format"]
    if isinstance(fmt, str) and fmt:  # still said, for the model to follow
        out["description"] = f"{out.get('description', '')} (format: {fmt})".strip()


_ABSENT = object()


def _inlined(schema: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A `$ref` to one of the schema's own definitions, replaced by it (the node's other keywords
    kept over it), and the definitions left to inline below it: a model that refers to itself is
    inlined once, not forever. Any other node as it is."""
    ref = schema.get("$ref")
    name = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None
    if name not in defs:
        return schema, defs
    target = defs[name]
    rest = {k: v for k, v in schema.items() if k != "$ref"}
    body = target if isinstance(target, dict) else {}  # `true`: any value, Gemini's empty schema
    return {**body, **rest}, {k: v for k, v in defs.items() if v is not target}


def _as_schema(value: Any) -> Any:
    """A subschema in Gemini's terms: JSON Schema's `true` (any value, as Rust's schemars writes
    an any-JSON field) is an empty schema, which Gemini reads the same way."""
    return {} if value is True else value


def _merged_all_of(schema: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`allOf` folded into the schema; a part that is a `$ref` (the usual form of a described
    sub-model: `{"allOf": [{"$ref": ...}], "description": ...}`) is its definition (`_inlined`).
    Returns the definitions left to inline below it."""
    parts = schema.get("allOf")
    if not isinstance(parts, list):
        return schema, defs
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        if not isinstance(part, dict):
            continue
        part, defs = _merged_all_of(*_inlined(part, defs))
        for k, v in part.items():
            if k == "properties" and isinstance(v, dict):
                props = dict(merged.get("properties") or {})
                for name, prop in v.items():
                    props.setdefault(name, prop)
                merged["properties"] = props
            elif k == "required" and isinstance(v, list):
                merged["required"] = list(dict.fromkeys([*(merged.get("required") or []), *v]))
            else:
                merged.setdefault(k, v)
    return merged, defs


def _one_type(out: dict[str, Any]) -> None:
    types = out.get("type")
    if not isinstance(types, list):
        return
    named = [t for t in types if t != "null"]
    if "null" in types:
        out["nullable"] = True
    if len(named) == 1:
        out["type"] = named[0]
    else:
        del out["type"]
        if named:
            out["anyOf"] = [{"type": t} for t in named]


def _string_enum(out: dict[str, Any], const: Any) -> None:
    values = [const] if const is not _ABSENT else out.get("enum")
    if not isinstance(values, list):
        return
    if None in values:
        out["nullable"] = True
        values = [v for v in values if v is not None]
    if not values:
        out.pop("enum", None)
        return
    if all(isinstance(v, str) for v in values):
        out["enum"] = values
        out.setdefault("type", "string")
        return
    out.pop("enum", None)
    told = ", ".join(json.dumps(v) for v in values)
    out["description"] = f"{out.get('description', '')} (one of: {told})".strip()
