"""Turn an OpenAI-style chat request into the `RoutingRequest` the router decides on.

What gets embedded is the last user turn. Agent clients such as OpenClaw send a 25-48 KB
system prompt and the whole history on every turn; embedding that would make every request
look alike (the system prompt dominates the vector) and cost ~10x more to encode. The
system prompt and earlier turns still count: they set `input_tokens` (hence cost and
context-window checks), `n_turns` and `has_tools`.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

from router.image_size import data_url_size
from router.types import RoutingRequest

CHARS_PER_TOKEN = 4  # the usual English average; good enough for pricing and context checks
# A character beyond ASCII is worth more: a Chinese, Japanese or Korean character is about one
# token to GPT and Claude tokenizers, not a quarter of one, and four characters per token
# undercounted such a prompt ~4x (cost, budgets, context-window checks). Each UTF-8 byte past a
# character's first adds 1.5 characters' worth: a 3-byte CJK character counts 4 (one token), a
# 2-byte Cyrillic or accented letter 2.5, a 4-byte emoji 5.5. Read from the UTF-8 length, so it
# costs one encode of a non-ASCII text and nothing for an ASCII one.
EXTRA_CHARS_PER_UTF8_BYTE = 1.5


# The content part types that carry text and images (chat completions' and the Responses API's):
# the adapters translate these same ones.
TEXT_PART_TYPES = ("text", "input_text")
IMAGE_PART_TYPES = ("image_url", "input_image")


def wants_logprobs(body: Mapping[str, Any]) -> bool:
    return bool(body.get("logprobs") or body.get("top_logprobs"))


def content_text(content: Any) -> str:
    """Flatten an OpenAI message `content` (string or list of parts) to its text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in TEXT_PART_TYPES:
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


# What a provider bills an image whose size the gateway cannot read (a URL): OpenAI's fixed 85
# tokens for `detail: low`, and 765 for a 1024x1024 picture at the default detail (Anthropic's
# ~1,600 for a large one is of that order).
IMAGE_TOKENS = {"low": 85}
IMAGE_TOKENS_DEFAULT = 765
# OpenAI's vision formula, for an inline image whose header gives its size: `detail: low` is one
# 512 px picture; otherwise the image is scaled down to fit 2048x2048, then its shortest side down
# to 768 (a smaller image is not enlarged), and billed per 512 px tile plus the low picture. At
# most 2x4 tiles remain, 1,445 tokens, however large the image: a huge picture counts at most
# 680 tokens more than the fixed estimate, in the context-window check and in budgets alike.
IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170
IMAGE_TILE_PX = 512
IMAGE_FIT_PX = 2048
IMAGE_SHORT_SIDE_PX = 768


def vision_tokens(width: int, height: int, detail: str | None) -> int:
    """What OpenAI bills an image of `width` x `height` pixels at `detail` (`auto` reads as `high`)."""
    if detail == "low":
        return IMAGE_BASE_TOKENS
    for bound, side in ((IMAGE_FIT_PX, max), (IMAGE_SHORT_SIDE_PX, min)):
        scale_from = side(width, height)
        if scale_from > bound:  # in integers: the side that sets the bound lands on it exactly
            width, height = width * bound // scale_from, height * bound // scale_from
    tiles = max(1, -(-width // IMAGE_TILE_PX)) * max(1, -(-height // IMAGE_TILE_PX))
    return IMAGE_TILE_TOKENS * tiles + IMAGE_BASE_TOKENS


# Only the first this many inline images of a request are sized from their headers; any further one
# counts at the fixed estimate. A JPEG's walk is bounded (router.image_size) but an 8 MB body holds
# over a thousand crafted ones, and this runs on the event loop: the bound keeps the worst request
# to a few milliseconds. In a conversation with more, the later ones count 765 (85 at low detail) as
# every image did before headers were read: at most 680 tokens under what a large picture bills.
IMAGES_SIZED = 64


def image_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Input tokens the images of a conversation cost (an agent replays them every turn): by
    OpenAI's formula for an inline image whose header gives its size (the first IMAGES_SIZED of
    them), else a fixed estimate."""
    total, sized = 0, 0
    for m in messages:
        content = m.get("content")
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, Mapping) or part.get("type") not in IMAGE_PART_TYPES:
                continue
            # chat completions: {"image_url": {"url", "detail"}}; the Responses API: {"image_url": url, "detail"}
            image = part.get("image_url")
            url, detail = (image.get("url"), image.get("detail")) if isinstance(image, Mapping) else (image, part.get("detail"))
            detail = detail if isinstance(detail, str) else None
            size = None
            # `detail: low` costs the same whatever the size: no header is read for it.
            if sized < IMAGES_SIZED and detail != "low" and isinstance(url, str) and url.startswith("data:"):
                sized += 1
                size = data_url_size(url)
            total += IMAGE_TOKENS.get(detail, IMAGE_TOKENS_DEFAULT) if size is None else vision_tokens(*size, detail)
    return total


# Inline attachments (a PDF as a `file` part's `file_data`, a recording as `input_audio.data`) are
# forwarded as sent and billed as whatever the provider makes of them, which the gateway cannot
# see. They stay out of `input_tokens`, which decides context-window exclusion: counted at these
# worst cases an ordinary PDF would look longer than most windows. The policy prices them into
# each candidate's cost at the worst cases instead (router.policy.attachment_cost), and budgets
# reserve them (service/governance/hook.py).
# A PDF: OpenAI puts into the context both its extracted text and an image of each page (up to 100
# pages a request), Anthropic bills ~1,500-3,000 tokens a page, Gemini 258 a page. A page's text
# is Flate-compressed ~3-4:1 and a token is ~4 characters, so a page dense with text costs about
# one token per byte of the file, its picture included; the fonts and pictures a typical PDF
# embeds make it 10-100x more bytes per token. One token per decoded byte is therefore the bound;
# only a PDF of near-empty pages (a page's picture is billed whatever it holds) can exceed it,
# which governance logs as a warning when such a request settles above its maximum.
FILE_TOKENS_PER_BYTE = 1.0
# Audio: OpenAI bills ~10 tokens a second of input audio, Gemini 32; the leanest input formats
# (8 kbit/s MP3, 1,000 bytes a second) make that at most 0.032 tokens per byte; 1/16 doubles it.
AUDIO_TOKENS_PER_BYTE = 1 / 16


def _payload_bytes(data: str) -> int:
    """The decoded size of base64 `data`, bare or in a data: URL, without decoding it."""
    payload = data.partition(",")[2] if data.startswith("data:") else data
    return len(payload.rstrip("=")) * 3 // 4


def attachments(messages: Iterable[Mapping[str, Any]]) -> tuple[int, int, int]:
    """(decoded bytes of the inline files and audio, the most tokens a provider may bill for them,
    parts that refer to content elsewhere: a `file_id`, a URL)."""
    size, tokens, unsized = 0, 0.0, 0
    for m in messages:
        content = m.get("content")
        for part in content if isinstance(content, list) else ():
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "file":
                holder, name, rate = part.get("file"), "file_data", FILE_TOKENS_PER_BYTE
            elif kind == "input_audio":
                holder, name, rate = part.get("input_audio"), "data", AUDIO_TOKENS_PER_BYTE
            else:
                continue
            data = holder.get(name) if isinstance(holder, Mapping) else None
            if not isinstance(data, str) or data.startswith(("http://", "https://")):
                unsized += 1
                continue
            n = _payload_bytes(data)
            size += n
            tokens += n * rate
    return size, math.ceil(tokens), unsized


def token_chars(text: str) -> float:
    """`text`'s length in ASCII-equivalent characters (CHARS_PER_TOKEN of them make a token)."""
    if text.isascii():
        return len(text)
    return len(text) + EXTRA_CHARS_PER_UTF8_BYTE * (len(text.encode("utf-8", "surrogatepass")) - len(text))


def estimate_tokens(text: str) -> int:
    return math.ceil(token_chars(text) / CHARS_PER_TOKEN)


def output_limit(body: Mapping[str, Any]) -> tuple[int | None, str]:
    """The output limit a chat body sets and the field it came from. A client that sends both
    `max_completion_tokens` and `max_tokens` gets the smaller: the answer must keep to each."""
    given = [(v, k) for k in ("max_completion_tokens", "max_tokens")
             if isinstance(v := body.get(k), int) and not isinstance(v, bool) and v > 0]
    return min(given) if given else (None, "max_tokens")


# Needs a catalog may declare no model for: one written before these capabilities existed sends
# such requests on as it always did (the upstream reads or drops what it can), instead of
# refusing every one of them.
OPT_IN_NEEDS = frozenset({"files", "audio", "logprobs"})


def view_chat_request(body: Mapping[str, Any], declared: frozenset[str] | None = None) -> RoutingRequest:
    """The routing view of a chat-completions body (assumed already schema-checked). `declared`:
    the capabilities some model of the catalog has; an opt-in need none has is not required
    (None: every need is)."""
    messages = list(body.get("messages") or [])
    tools = body.get("tools") or body.get("functions") or []  # `functions`: the legacy form of tools
    last_user = ""
    system_parts = []
    total_chars = 0
    prefix_chars = 0.0
    kinds: set[Any] = set()  # the content parts' types: images, files and audio are looked at only when sent
    for m in messages:
        content = m.get("content")
        text = content_text(content)
        total_chars += token_chars(text)
        if isinstance(content, list):
            kinds.update(part.get("type") for part in content if isinstance(part, Mapping))
        for fn in [call.get("function") or {} for call in m.get("tool_calls") or []] + [m.get("function_call") or {}]:
            total_chars += token_chars(str(fn.get("name", ""))) + token_chars(str(fn.get("arguments", "")))
        role = m.get("role")
        if role == "user":
            last_user = text
        elif role in ("system", "developer"):
            system_parts.append(text)
            prefix_chars += token_chars(text)
    # What else the upstream reads and bills: both tool lists when a client sends both, a JSON
    # schema (Anthropic's adapter writes it into the system prompt), a predicted output. Left
    # out, a 3 MB schema cost 45 times the key's budget on a reservation for a few words.
    for extra in (body.get("tools") or [], body.get("functions") or []):
        for t in extra:
            tool_chars = token_chars(str(t))
            total_chars += tool_chars
            prefix_chars += tool_chars
    for field in ("response_format", "prediction"):
        if body.get(field):
            total_chars += token_chars(json.dumps(body[field], ensure_ascii=False, default=str))
    needs = set()
    if tools:
        needs.add("tools")
    fmt = body.get("response_format") or {}
    if isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json")
    images = image_tokens(messages) if kinds.intersection(IMAGE_PART_TYPES) else 0
    attachment_bytes, attachment_tokens, unsized = attachments(messages) if kinds & {"file", "input_audio"} else (0, 0, 0)
    if images:
        needs.add("vision")
    # An adapter that cannot carry a part drops it or refuses it: either way the model never
    # reads the PDF or hears the audio, so `auto` must not pick it.
    if "file" in kinds:
        needs.add("files")
    if "input_audio" in kinds:
        needs.add("audio")
    if wants_logprobs(body):
        needs.add("logprobs")
    if declared is not None:
        needs -= OPT_IN_NEEDS - declared
    max_out, _ = output_limit(body)
    n = body.get("n")
    n_turns = sum(1 for m in messages if m.get("role") == "user")
    if not last_user and messages:
        # No text in the last user turn (an image alone): route on the latest user text there is,
        # never on the system prompt, an answer or a tool result.
        last_user = next((t for m in reversed(messages) if m.get("role") == "user" and (t := content_text(m.get("content")))), "")
    input_tokens = math.ceil(total_chars / CHARS_PER_TOKEN) + images
    prefix_tokens = math.ceil(prefix_chars / CHARS_PER_TOKEN)
    return RoutingRequest(
        text=last_user,
        input_tokens=input_tokens,
        n_turns=max(n_turns, 1),
        has_tools=bool(tools),
        needs=frozenset(needs),
        max_output_tokens=max_out,
        answers=n if isinstance(n, int) and n > 1 else 1,
        system_text="\n".join(system_parts),
        attachment_bytes=attachment_bytes,
        attachment_tokens=attachment_tokens,
        unsized_attachments=unsized,
        prefix_tokens=prefix_tokens,
        image_tokens=images,
        cacheable_tokens=input_tokens if any(m.get("role") == "assistant" for m in messages[:-1]) else prefix_tokens,
    )


def view_prompt(text: str) -> RoutingRequest:
    """The routing view of a bare prompt, as in the offline datasets."""
    return RoutingRequest(text=text, input_tokens=estimate_tokens(text))
