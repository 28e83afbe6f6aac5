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
from service.providers import attachments

# Anthropic scales an image down to about 1.15 megapixels (1,092 x 1,092 px) and bills width x
# height / 750 tokens: at most about 1,600. An image whose size is not read (a URL) counts that.
IMAGE_MAX_TOKENS = 1600
IMAGE_PIXELS_PER_TOKEN = 750
# Anthropic: a PDF page takes 1,500-3,000 tokens of text beside its picture; the top of the range.
PDF_PAGE_TOKENS = 3000


def _image_tokens(source: dict[str, Any], sized: bool) -> int:
    size = data_url_size(f"data:{source.get('media_type')};base64,{source.get('data', '')}") if sized else None
    return IMAGE_MAX_TOKENS if size is None else min(IMAGE_MAX_TOKENS, math.ceil(size[0] * size[1] / IMAGE_PIXELS_PER_TOKEN))


def _pdf_tokens(data: str) -> int:
    """By its pages; a PDF whose pages cannot be counted (encrypted, broken), as text of its size."""
    pages = attachments.pdf_pages(data)
    return pages * PDF_PAGE_TOKENS if pages else math.ceil(len(data) * 3 / 4 / CHARS_PER_TOKEN)


def input_tokens(payload: dict[str, Any]) -> int:
    """The estimated input tokens of a Messages API request body."""
    chars = token_chars(json.dumps([payload.get("system") or [], payload.get("tools") or []], ensure_ascii=False))
    tokens, sized = 0, 0
    for message in payload["messages"]:
        for block in message["content"]:
            source = block.get("source") or {}
            if block["type"] == "image":
                # Only the first IMAGES_SIZED images' headers are read, as in the routing view.
                base64_source = source.get("type") == "base64"
                tokens += _image_tokens(source, base64_source and sized < IMAGES_SIZED)
                sized += base64_source
            elif block["type"] == "document" and source.get("type") == "base64":
                tokens += _pdf_tokens(source.get("data", ""))
            elif block["type"] == "document":
                chars += token_chars(str(source.get("data", "")))
            else:
                chars += token_chars(json.dumps(block, ensure_ascii=False))
    return tokens + math.ceil(chars / CHARS_PER_TOKEN)
