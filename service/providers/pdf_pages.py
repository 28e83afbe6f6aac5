"""A PDF's page count, for sizing a request before it is sent (`anthropic_input_tokens`): read from
the file as sent, within one inflate budget for all of a request's PDFs, since it runs on the event
loop."""
from __future__ import annotations

import base64
import binascii
import re
import zlib

# A PDF's page count. Its page tree's nodes (`/Type /Pages`) each give their pages' number as
# `/Count`, the root's (the largest) the document's: read first, from the file as sent. Only a PDF
# where none is found (a PDF 1.5 writer may put the tree into compressed object streams; a broken
# file) has its object streams inflated, and its page objects are counted where no tree is found.
# A node's /Count stands before or after its /Type in the same dictionary (a nested dictionary in
# between hides it); each try stops at the next /Type, /Count or `>`, so a scan is linear.
_GAP = rb"(?:[^>/]|/(?!Type|Count))*+"
_PDF_TREE_COUNT = re.compile(rb"/Type\s*/Pages(?![A-Za-z])" + _GAP + rb"/Count\s+(\d{1,9})"
                             rb"|/Count\s+(\d{1,9})" + _GAP + rb"/Type\s*/Pages(?![A-Za-z])")
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
# An object stream: its dictionary's /Type, its data within OBJECT_STREAM_HEAD bytes after it.
_PDF_OBJECT_STREAM = re.compile(rb"/Type\s*/ObjStm(?![A-Za-z])")
_STREAM_DATA = re.compile(rb"stream\r?\n")
OBJECT_STREAM_HEAD = 1024
# What counting one request's PDFs may inflate, all of them together: past it (a zip bomb, hundreds
# of crafted files) a PDF whose pages are not yet counted is sized as text of its size. It runs on
# the event loop, and a limit per PDF let one request of 300 small ones hold it for 17 s. Each
# object stream tried costs OBJECT_STREAM_COST more (its search and its inflater's start), so
# thousands of empty ones cannot take that time either.
PDF_INFLATE_BUDGET = 4 << 20
OBJECT_STREAM_COST = 1024
INFLATE_STEP = 256 << 10


class InflateBudget:
    """The bytes one request's PDFs may still inflate."""

    def __init__(self, left: int = PDF_INFLATE_BUDGET) -> None:
        self.left = left


def _inflate(data: memoryview, budget: InflateBudget) -> bytes | None:
    """A stream's data inflated (b"" when it is not zlib data); None when the budget ran out first.
    Each step is charged before it runs: a stream corrupt near its end raises only after inflating
    all it held, and would otherwise cost nothing."""
    inflater = zlib.decompressobj()
    parts = []
    while not inflater.eof:
        step = min(INFLATE_STEP, budget.left)
        if step <= 0:
            return None
        budget.left -= step
        try:
            part = inflater.decompress(data, step)
        except zlib.error:
            return b""
        budget.left += step - len(part)
        parts.append(part)
        data = memoryview(inflater.unconsumed_tail)
        if not data and len(part) < step:  # all read, nothing held back: a stream cut short
            break
    return b"".join(parts)


def _tree_count(raw: bytes) -> int:
    return max((int(a or b) for a, b in _PDF_TREE_COUNT.findall(raw)), default=0)


def pdf_pages(data: str, budget: InflateBudget) -> int | None:
    """How many pages base64 `data`, a PDF, has: its page tree's count, else its page objects
    (object streams inflated within `budget`); None when none is found (an encrypted or a broken
    file) or the budget ran out before they were."""
    try:
        raw = base64.b64decode(data)
    except (binascii.Error, ValueError):
        return None
    if count := _tree_count(raw):
        return count
    pages = len(_PDF_PAGE.findall(raw))
    at = 0
    while found := _PDF_OBJECT_STREAM.search(raw, at):
        budget.left -= OBJECT_STREAM_COST
        if budget.left <= 0:
            return None
        at = found.end()
        head = _STREAM_DATA.search(raw, at, at + OBJECT_STREAM_HEAD)
        if head is None:
            continue
        at = raw.find(b"endstream", head.end())
        if at < 0:
            break
        inflated = _inflate(memoryview(raw)[head.end():at], budget)
        if inflated is None:  # cut by the budget: the count would be short
            return None
        count = max(count, _tree_count(inflated))
        pages += len(_PDF_PAGE.findall(inflated))
    return count or pages or None
