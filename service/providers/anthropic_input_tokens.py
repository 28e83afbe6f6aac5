"""How many input tokens a Messages API request will take, for the max_tokens the adapter sends when
the client set none: Anthropic refuses input + max_tokens over the window, so the default is the
model's output limit cut to the room the prompt leaves.

Text counts by its characters (`router.request_view.estimate_tokens`). An inline image or PDF
counts by what Anthropic bills for it, never by its base64, which is thousands of times longer: a
1 MB photo counted as text left no room and the answer was cut after one token.
"""
from __future__ import annotations

import json
import math
from typing import Any

from router.image_size import data_url_size
from router.request_view import CHARS_PER_TOKEN, IMAGES_SIZED, token_chars
from service.providers import pdf_pages

# Anthropic scales an image down to about 1.15 megapixels (1,092 x 1,092 px) and bills width x
# height / 750 tokens: at most about 1,600. An image whose size is not read (a URL) counts that.
IMAGE_MAX_TOKENS = 1600
IMAGE_PIXELS_PER_TOKEN = 750
# Anthropic: a PDF page takes 1,500-3,000 tokens of text beside its picture; the low end. At the
# top a 70-page report left a 200k window no room for an answer, while an estimate under what
# Anthropic counts costs at worst its "prompt is too long", which a routed request fails over on.
PDF_PAGE_TOKENS = 1500
# Recent requests' PDF tokens: a request builds its Messages body again for each attempt (a retry,
# a failover to another Claude) and counts its PDFs once. Keyed by their lengths and hashes, so the
# memo holds no attachment; Python salts string hashes per process, so a client cannot make two
# collide, and a collision would only misjudge a default max_tokens.
PDF_MEMO_SIZE = 256
_pdf_memo: dict[tuple[int, int, int], int] = {}


def _image_tokens(source: dict[str, Any], sized: bool) -> int:
    size = data_url_size(f"data:{source.get('media_type')};base64,{source.get('data', '')}") if sized else None
    return IMAGE_MAX_TOKENS if size is None else min(IMAGE_MAX_TOKENS, math.ceil(size[0] * size[1] / IMAGE_PIXELS_PER_TOKEN))


def _pdf_tokens(data: str, budget: pdf_pages.InflateBudget) -> int:
    """By its pages; a PDF whose pages are not counted (encrypted, broken, past the budget), as
    text of its size."""
    pages = pdf_pages.pdf_pages(data, budget)
    return pages * PDF_PAGE_TOKENS if pages else math.ceil(len(data) * 3 / 4 / CHARS_PER_TOKEN)


def _pdfs_tokens(pdfs: list[str]) -> int:
    """The tokens of a request's base64 PDFs, counted within one inflate budget for them all."""
    key = (len(pdfs), sum(map(len, pdfs)), hash(tuple(pdfs)))
    tokens = _pdf_memo.get(key)
    if tokens is None:
        budget = pdf_pages.InflateBudget()
        tokens = sum(_pdf_tokens(data, budget) for data in pdfs)
        if len(_pdf_memo) >= PDF_MEMO_SIZE:
            _pdf_memo.pop(next(iter(_pdf_memo)), None)
        _pdf_memo[key] = tokens
    return tokens


def input_tokens(payload: dict[str, Any]) -> int:
    """The estimated input tokens of a Messages API request body."""
    chars = token_chars(json.dumps([payload.get("system") or [], payload.get("tools") or []], ensure_ascii=False))
    tokens, sized = 0, 0
    pdfs: list[str] = []
    for message in payload["messages"]:
        for block in message["content"]:
            source = block.get("source") or {}
            if block["type"] == "image":
                # Only the first IMAGES_SIZED images' headers are read, as in the routing view.
                base64_source = source.get("type") == "base64"
                tokens += _image_tokens(source, base64_source and sized < IMAGES_SIZED)
                sized += base64_source
            elif block["type"] == "document" and source.get("type") == "base64":
                pdfs.append(str(source.get("data", "")))
            elif block["type"] == "document":
                chars += token_chars(str(source.get("data", "")))
            else:
                chars += token_chars(json.dumps(block, ensure_ascii=False))
    return tokens + (_pdfs_tokens(pdfs) if pdfs else 0) + math.ceil(chars / CHARS_PER_TOKEN)
