"""What the simulated models answer: the 11 RouterBench models, whether an answer is good, and its content.

Each model has a time to first token, a throughput, a verbosity and a mean answer quality patterned
on RouterBench (quality: the mean correctness in the RouterBench subset; verbosity: the median
length of its MBPP answers; prices live in service/default_config.yaml). Answers are labelled
("[simulated <model>] ...") and deterministic per (model, prompt). Whether an answer counts as good
is drawn from a prompt difficulty shared by all models plus a per-model draw, calibrated so each
model's long-run good-answer rate equals its RouterBench quality. With tools (or legacy `functions`)
and a user turn last, a tool-capable model calls the named function, else the first, with arguments
built from its JSON schema; after a `tool` turn it answers. A `json_schema` response format is
answered with an instance of the schema. The HTTP side (latency, wire shapes) is service/simulator.py.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from router.request_view import content_text, estimate_tokens, output_limit


@dataclass(frozen=True)
class SimModel:
    quality: float  # long-run rate of good answers (RouterBench mean correctness)
    ttft_s: float
    tps: float  # output tokens per second
    verbosity: int  # median output tokens of an open-ended answer
    context_window: int
    tools: bool


MODELS: dict[str, SimModel] = {
    "gpt-4-1106-preview": SimModel(0.879, 0.70, 25.0, 294, 128_000, True),
    "gpt-3.5-turbo-1106": SimModel(0.724, 0.35, 70.0, 146, 16_385, True),
    "claude-v1": SimModel(0.722, 0.90, 30.0, 145, 100_000, False),
    "claude-v2": SimModel(0.544, 1.10, 30.0, 220, 100_000, False),
    "claude-instant-v1": SimModel(0.669, 0.50, 80.0, 178, 100_000, False),
    "mixtral-8x7b-chat": SimModel(0.739, 0.30, 90.0, 250, 32_768, True),
    "mistral-7b-chat": SimModel(0.581, 0.20, 110.0, 206, 8_192, False),
    "llama-2-70b-chat": SimModel(0.614, 0.50, 40.0, 281, 4_096, False),
    "code-llama-instruct-34b-chat": SimModel(0.611, 0.40, 50.0, 112, 16_384, False),
    "Yi-34B-Chat": SimModel(0.771, 0.50, 40.0, 236, 4_096, False),
    "WizardLM-13B-V1.2": SimModel(0.568, 0.30, 70.0, 225, 4_096, False),
}

# Good iff DIFFICULTY_WEIGHT * difficulty(prompt) + (1 - DIFFICULTY_WEIGHT) * luck(model, prompt) < threshold:
# models agree on which prompts are hard, as real models do, without being perfectly nested.
DIFFICULTY_WEIGHT = 0.7

FILLER = (
    "this simulated answer stands in for the model's reply and carries no real content "
    "the router measured its latency cost and quality like any other upstream call"
).split()

JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
# Past EXAMPLE_DEPTH levels or EXAMPLE_NODES values an instance winds down (required properties only,
# fewest array items, null where allowed), which ends recursive schemas; one that recurses without such
# an exit (a required self-reference), or still branches on, gets null past the hard bounds.
EXAMPLE_DEPTH, EXAMPLE_DEPTH_LIMIT = 8, 24
EXAMPLE_NODES = 2000
# minItems/minLength are honoured up to these bounds, so a hostile schema cannot make the reply huge.
MAX_ITEMS, MAX_LENGTH = 4, 1000
MAX_SCHEMA_DEPTH = 128  # levels, $refs followed included: deeper is refused rather than walked into a RecursionError
STRING_FORMATS = {"date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00Z",
                  "email": "user@example.com", "uri": "https://example.com/", "hostname": "example.com",
                  "ipv4": "127.0.0.1", "ipv6": "::1", "uuid": "00000000-0000-4000-8000-000000000000"}


def _unit(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def threshold(quality: float, a: float = DIFFICULTY_WEIGHT) -> float:
    """t with P(a*U1 + (1-a)*U2 < t) = quality for independent uniforms (inverse of a trapezoid CDF)."""
    b = 1.0 - a
    lo, hi = min(a, b), max(a, b)
    if quality <= lo / (2 * hi):
        return (2 * a * b * quality) ** 0.5
    if quality <= 1 - lo / (2 * hi):
        return quality * hi + lo / 2
    return 1 - (2 * a * b * (1 - quality)) ** 0.5


def is_good(model: str, prompt: str) -> tuple[bool, float]:
    """The deterministic verdict on `model`'s answer to `prompt`, and the prompt's difficulty."""
    difficulty = _unit("difficulty", prompt)
    score = DIFFICULTY_WEIGHT * difficulty + (1 - DIFFICULTY_WEIGHT) * _unit("luck", model, prompt)
    return score < threshold(MODELS[model].quality), difficulty


def _last_turn(messages: list[dict[str, Any]]) -> tuple[str, str]:
    for m in reversed(messages):
        if m.get("role") in ("user", "tool"):
            return m["role"], content_text(m.get("content"))
    return "user", ""


def _resolve(root: dict[str, Any], ref: Any) -> Any:
    """The target of a local `$ref` ("#/$defs/Step", "#"), or None: only in-document pointers are followed."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _described(value: Any) -> str:
    # By kind, not by json.dumps: the value may be nested deep enough to overflow the encoder.
    if isinstance(value, str):
        return json.dumps(value[:40])
    return {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(type(value), "null")


def schema_problem(schema: Any, root: dict[str, Any], where: tuple[str, ...] = (),
                   followed: set[str] | None = None, depth: int = 0) -> str | None:
    """Why the simulator cannot build an instance of `schema`, in the words of OpenAI's 400, or None.
    Each `$ref` target is checked once (`followed`), so recursive schemas are checked without looping.
    `depth` counts the `$ref`s followed too: a target's path starts afresh, and a chain of a few
    thousand references, each shallow, was a RecursionError (a 500 that counts against the model)."""
    followed = set() if followed is None else followed
    context = f"In context={where!r}, "
    if depth > MAX_SCHEMA_DEPTH:
        return f"{context}schema is nested deeper than {MAX_SCHEMA_DEPTH} levels."
    if isinstance(schema, bool):  # JSON Schema's `true` (anything) and `false` (nothing)
        return None
    if not isinstance(schema, dict):
        return f"{context}schema must be a JSON Schema object, got {_described(schema)}."
    kinds = schema.get("type", [])
    if not all(isinstance(k, str) and k in JSON_TYPES for k in (kinds if isinstance(kinds, list) else [kinds])):
        return f"{context}'type' must be one of {', '.join(JSON_TYPES)} or an array of them, got {_described(kinds)}."
    if "$ref" in schema and not isinstance(_resolve(root, schema["$ref"]), (dict, bool)):
        return f"{context}reference {_described(schema['$ref'])} can't be resolved to a schema in this document."
    if "enum" in schema and not (isinstance(schema["enum"], list) and schema["enum"]):
        return f"{context}'enum' must be a non-empty array."
    required = schema.get("required", [])
    if not (isinstance(required, list) and all(isinstance(k, str) for k in required)):
        return f"{context}'required' must be an array of property names."
    children: list[tuple[tuple[str, ...], Any]] = []
    if "$ref" in schema and schema["$ref"] not in followed:
        followed.add(schema["$ref"])
        children.append((tuple(filter(None, schema["$ref"][1:].split("/"))), _resolve(root, schema["$ref"])))
    for key in ("properties", "$defs", "definitions"):
        if not isinstance(schema.get(key, {}), dict):
            return f"{context}'{key}' must be an object."
        children += [((*where, key, name), sub) for name, sub in schema.get(key, {}).items()]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema and not (isinstance(schema[key], list) and schema[key]):
            return f"{context}'{key}' must be a non-empty array."
        children += [((*where, key, str(i)), sub) for i, sub in enumerate(schema.get(key, []))]
    if "items" in schema:
        children.append(((*where, "items"), schema["items"]))
    if isinstance(schema.get("additionalProperties"), dict):
        children.append(((*where, "additionalProperties"), schema["additionalProperties"]))
    return next((p for path, sub in children if (p := schema_problem(sub, root, path, followed, depth + 1))), None)


def _allows_null(schema: Any) -> bool:
    kinds = schema.get("type") if isinstance(schema, dict) else None
    return kinds == "null" or (isinstance(kinds, list) and "null" in kinds)


def _bounded(value: float, schema: dict[str, Any], step: float) -> float:
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        value = max(value, schema["exclusiveMinimum"] + step)
    if isinstance(schema.get("minimum"), (int, float)):
        value = max(value, schema["minimum"])
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        value = min(value, schema["exclusiveMaximum"] - step)
    if isinstance(schema.get("maximum"), (int, float)):
        value = min(value, schema["maximum"])
    return value


def example(schema: dict[str, Any], root: dict[str, Any], name: str, prompt: str) -> Any:
    """A deterministic instance of a schema that passed `schema_problem`; strings come from the prompt."""
    return _Example(root, prompt).of(schema, name, 0)


class _Example:
    def __init__(self, root: dict[str, Any], prompt: str):
        self.root, self.prompt, self.nodes = root, prompt, 0

    def of(self, schema: dict[str, Any] | bool, name: str, depth: int) -> Any:
        self.nodes += 1
        if depth >= EXAMPLE_DEPTH_LIMIT or self.nodes > 2 * EXAMPLE_NODES or schema is False:
            return None
        if schema is True:
            schema = {}  # anything: the same label a schema without a type gets
        deep = depth >= EXAMPLE_DEPTH or self.nodes > EXAMPLE_NODES
        if "$ref" in schema:
            return self.of(_resolve(self.root, schema["$ref"]), name, depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        options = schema.get("anyOf") or schema.get("oneOf")
        if options:
            if deep and any(_allows_null(o) for o in options):
                return None
            return self.of(next((o for o in options if not _allows_null(o)), options[0]), name, depth + 1)
        if schema.get("allOf"):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                if not isinstance(part, dict):
                    continue  # `true` adds nothing to the merge (`false` would allow no instance at all)
                part = _resolve(self.root, part["$ref"]) if "$ref" in part else part
                merged = {**part, **merged, "properties": {**part.get("properties", {}), **merged.get("properties", {})},
                          "required": [*merged.get("required", []), *part.get("required", [])]}
            return self.of(merged, name, depth + 1)
        kinds = schema.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if "null" in kinds and (deep or kinds == ["null"]):
            return None
        kind = next((k for k in kinds if k not in (None, "null")), None)
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            props = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            keys = schema.get("required") or ([] if deep else list(props))
            return {k: self.of(props.get(k) or (extra if isinstance(extra, dict) else {}), k, depth + 1) for k in keys}
        if kind == "array":
            least = min(schema["minItems"], MAX_ITEMS) if isinstance(schema.get("minItems"), int) else 0
            count = least if deep or schema.get("maxItems") == 0 else max(1, least)
            items = schema.get("items") if isinstance(schema.get("items"), (dict, bool)) else {}
            return [self.of(items, name, depth + 1) for _ in range(count)]
        if kind == "integer":
            return int(_bounded(1, schema, 1))
        if kind == "number":
            return float(_bounded(1.0, schema, 0.5))
        if kind == "boolean":
            return True
        text = " ".join(self.prompt.split()[:8]) or name
        if isinstance(schema.get("format"), str):
            text = STRING_FORMATS.get(schema["format"], text)
        if isinstance(schema.get("minLength"), int):
            text = text.ljust(min(schema["minLength"], MAX_LENGTH), ".")
        # `pattern` is not honoured: a regex has no general inverse, and the simulator's strings are labels anyway.
        return text[:schema["maxLength"]] if isinstance(schema.get("maxLength"), int) else text


def callable_functions(body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any, bool]:
    """The functions the model may call, the caller's choice among them, and whether they came as legacy `functions`."""
    if body.get("tools"):
        return [t["function"] for t in body["tools"] if t.get("type", "function") == "function"], body.get("tool_choice"), False
    return list(body.get("functions") or []), body.get("function_call"), True


def chosen_name(choice: Any) -> str | None:
    """The function a `tool_choice` ({"type": "function", "function": {"name"}}) or `function_call` ({"name"}) forces."""
    if isinstance(choice, dict):
        named = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        return named.get("name") if isinstance(named.get("name"), str) else None
    return None


def _function_problem(fn: dict[str, Any], param: str) -> tuple[str, str, str] | None:
    parameters = fn.get("parameters")
    if parameters is None:
        return None
    problem = schema_problem(parameters, parameters)
    if problem is None and parameters.get("type", "object") != "object":
        problem = f"schema must be a JSON Schema of 'type: \"object\"', got 'type: {json.dumps(parameters['type'])}'."
    if problem is None:
        return None
    return f"Invalid schema for function '{fn['name']}': {problem}", "invalid_function_parameters", f"{param}.parameters"


def request_problem(body: dict[str, Any]) -> tuple[str, str, str] | None:
    """Why OpenAI would answer this chat body 400 beyond what `service.schemas.validate_chat` checks
    (the simulator runs that first): schemas it cannot build an instance of, and a `function_call`
    naming no given function: (message, code, param). Client input must never reach `answer`
    malformed, where it would be a 500 that the gateway blames on the model."""
    for key in ("tools", "functions"):
        for i, item in enumerate(body.get(key) or []):
            if key == "functions" or item.get("type", "function") == "function":
                fn, param = (item, f"functions[{i}]") if key == "functions" else (item["function"], f"tools[{i}].function")
                if problem := _function_problem(fn, param):
                    return problem
    functions, choice, legacy = callable_functions(body)
    named = chosen_name(choice)
    if legacy and named is not None and named not in {f["name"] for f in functions}:
        return (f"Invalid value for 'function_call': no function named '{named}' was specified in the 'functions' "
                "parameter.", "invalid_value", "function_call")
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        spec = fmt["json_schema"]
        schema = spec.get("schema") or {"type": "object"}
        if problem := schema_problem(schema, schema if isinstance(schema, dict) else {}):
            return f"Invalid schema for response_format '{spec['name']}': {problem}", "invalid_json_schema", "response_format"
    return None


def _tool_call(body: dict[str, Any], model: str, prompt: str) -> dict[str, Any] | None:
    functions, choice, _ = callable_functions(body)
    if not functions or choice == "none" or not MODELS[model].tools:
        return None
    named = chosen_name(choice)
    fn = next((f for f in functions if f["name"] == named), functions[0])
    parameters = fn.get("parameters") or {"type": "object"}
    args = example(parameters, parameters, fn["name"], prompt)
    call_id = "call_" + hashlib.sha256(f"{model}\x1f{prompt}".encode()).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": fn["name"], "arguments": json.dumps(args)}}


def _schema_instance(body: dict[str, Any], prompt: str) -> str | None:
    """The reply to a `json_schema` response format: an instance of the schema, as JSON text."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return None
    spec = fmt["json_schema"]
    schema = spec.get("schema") or {"type": "object"}
    return json.dumps(example(schema, schema, spec["name"], prompt))


def _text(model: str, prompt: str, after_tool: bool, good: bool, n_tokens: int) -> str:
    rng = random.Random(f"{model}\x1f{prompt}")
    topic = " ".join(prompt.split()[:10])
    lead = "Based on the tool result" if after_tool else "Answer to"
    words = [f"[simulated {model}]", f"{lead}: \"{topic}\"", "—", "a good answer." if good else "a weak answer."]
    while estimate_tokens(" ".join(words)) < n_tokens:
        words.append(rng.choice(FILLER))
    return " ".join(words)


def _wanted_tokens(sim: SimModel, model: str, prompt: str) -> int:
    """How long an open-ended answer is: lognormal around the model's verbosity."""
    return max(8, int(sim.verbosity * random.Random(f"len\x1f{model}\x1f{prompt}").lognormvariate(0.0, 0.5)))


def words(text: str) -> list[str]:
    """The text in the pieces it is streamed in (and given logprobs for): words, each after its space."""
    return [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]


def _stop_at(text: str, stop: Any) -> int | None:
    """Where the first stop sequence starts in `text` (the answer ends before it), or None."""
    sequences = [stop] if isinstance(stop, str) else stop or []
    found = [i for s in sequences if s and (i := text.find(s)) >= 0]
    return min(found) if found else None


def _logprobs(model: str, prompt: str, text: str, top: int) -> list[dict[str, Any]]:
    """Per-word logprobs. The simulator has no distribution to report: these are deterministic pseudo
    values drawn from (model, prompt, position), the sampled word most likely and the rest of the mass
    spread over filler words, so clients that read logprobs get well-formed, stable numbers."""
    entries = []
    for i, token in enumerate(words(text)):
        logprob = -(0.001 + 3.0 * _unit("logprob", model, prompt, str(i)) ** 3)
        rest = math.log(1.0 - math.exp(logprob))
        space = " " if token.startswith(" ") else ""
        others = [w for w in dict.fromkeys(FILLER) if space + w != token]
        random.Random(f"alt\x1f{model}\x1f{prompt}\x1f{i}").shuffle(others)
        top_entries = [(token, logprob)] + [(space + w, rest + (j + 1) * math.log(0.5)) for j, w in enumerate(others)]
        entries.append({"token": token, "logprob": round(logprob, 6), "bytes": list(token.encode()),
                        "top_logprobs": [{"token": t, "logprob": round(lp, 6), "bytes": list(t.encode())}
                                         for t, lp in top_entries[:top]]})
    return entries


@dataclass
class Answer:
    text: str
    tool_call: dict[str, Any] | None
    legacy_function: bool  # the call answers legacy `functions`: `function_call`, not `tool_calls`
    logprobs: list[dict[str, Any]] | None  # per-word entries when the client asked for logprobs
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    good: bool
    difficulty: float

    def usage(self, choices: int = 1) -> dict[str, int]:
        completion = self.completion_tokens * choices
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def answer(model: str, body: dict[str, Any]) -> Answer:
    """The simulated answer of `model` to a chat body that `request_problem` accepted (no waiting)."""
    sim = MODELS[model]
    messages = body["messages"]
    role, prompt = _last_turn(messages)
    tools = body.get("tools") or body.get("functions") or []
    prompt_tokens = estimate_tokens(json.dumps(messages)) + estimate_tokens(json.dumps(tools))
    good, difficulty = is_good(model, prompt)
    want_logprobs = body.get("logprobs") is True
    call = _tool_call(body, model, prompt) if role == "user" else None
    if call is not None:
        legacy = callable_functions(body)[2]
        return Answer("", call, legacy, [] if want_logprobs else None, prompt_tokens,
                      estimate_tokens(call["function"]["arguments"]) + 8, "function_call" if legacy else "tool_calls",
                      good, difficulty)
    schema_reply = _schema_instance(body, prompt)
    wanted = estimate_tokens(schema_reply) if schema_reply is not None else _wanted_tokens(sim, model, prompt)
    cap, _ = output_limit(body)
    truncated = cap is not None and cap < wanted
    if schema_reply is not None:
        text = schema_reply
    else:
        text = _text(model, prompt, role == "tool", good, cap if truncated else wanted)
        if (body.get("response_format") or {}).get("type") == "json_object":
            text = json.dumps({"simulated": True, "model": model, "answer": text})
    if truncated:
        text = text[: cap * 4]
        while estimate_tokens(text) > cap:  # the estimate weighs some characters more than a quarter token
            text = text[:-1]
    finish = "length" if truncated else "stop"
    stop = _stop_at(text, body.get("stop"))
    if stop is not None:
        text, finish = text[:stop], "stop"
    logprobs = _logprobs(model, prompt, text, body.get("top_logprobs") or 0) if want_logprobs else None
    return Answer(text, None, False, logprobs, prompt_tokens, estimate_tokens(text), finish, good, difficulty)
