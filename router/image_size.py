"""Width and height of an inline image (a base64 `data:` URL), read from its header bytes.

Only the bytes that hold the size are decoded: the first 30 for PNG, GIF and WebP; for JPEG the
marker segments are walked by their lengths up to the frame header (SOF), a few bytes per segment,
however large the EXIF or ICC segments before it, and for at most JPEG_MAX_SEGMENTS steps. No pixel
is decoded and nothing is installed.
Anything unreadable (another format, a truncated or malformed header, base64 with line breaks)
gives None, and the caller keeps its fixed estimate.
"""
from __future__ import annotations

import base64
import binascii
import struct
from typing import Callable

HEAD_BYTES = 30  # PNG's IHDR ends at 24, GIF's screen size at 10, WebP's VP8 frame size at 30
# A real JPEG has about a dozen segments before its frame header (JFIF or EXIF, quantization and
# Huffman tables); XMP, Photoshop and Adobe blocks and an ICC profile split into 64 KB APP2 pieces
# add a few more. A crafted file of empty segments that never reaches a frame header walks this many
# steps, each a read of a few bytes, and keeps the fixed estimate; an 8 MB body holds over a
# thousand such images, and router.request_view sizes only the first 64 of a request.
JPEG_MAX_SEGMENTS = 64
# Fill bytes (0xFF, any number of them before a marker) are skipped this many at a time, with one
# read: an encoder pads with a few, so a longer run is crafted and uses up the steps.
JPEG_FILL_READ = 64
# Frame headers: every SOFn but DHT (C4), JPG (C8) and DAC (CC), which share the range.
JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers that stand alone, with no length after them: TEM, RSTn, SOI.
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})

Reader = Callable[[int, int], bytes]


def data_url_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a `data:image/...;base64,` URL's image, or None when it cannot be read."""
    if not url.startswith("data:"):
        return None
    comma = url.find(",")
    if comma < 0 or "base64" not in (p.strip().lower() for p in url[5:comma].split(";")[1:]):
        return None
    read = _base64_reader(url, comma + 1)
    try:
        return _size(read)
    except (binascii.Error, ValueError, struct.error):
        return None


def _base64_reader(text: str, offset: int) -> Reader:
    """`read(start, n)`: bytes start..start+n of the base64 payload at `text[offset:]` (fewer at
    its end), decoding only the 4-character groups that hold them (and never copying the payload:
    an image may be megabytes)."""

    def read(start: int, n: int) -> bytes:
        first = start // 3
        chunk = text[offset + first * 4: offset + -(-(start + n) // 3) * 4]
        # validate=True: a stray character (a line break) would shift every later offset.
        raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
        return raw[start - first * 3: start - first * 3 + n]

    return read


def _size(read: Reader) -> tuple[int, int] | None:
    head = read(0, HEAD_BYTES)
    size: tuple[int, int] | None = None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        size = struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        size = struct.unpack("<HH", head[6:10])  # the logical screen every frame is drawn on
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size = _webp(head)
    elif head[:2] == b"\xff\xd8":
        size = _jpeg(read)
    if size is None or min(size) <= 0:
        return None
    return size


def _webp(head: bytes) -> tuple[int, int] | None:
    if len(head) < HEAD_BYTES:
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":  # extended: the canvas size, each less one, in 24 bits
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L" and head[20] == 0x2F:  # lossless: 14 bits each, less one
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy: after the key frame's start code
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg(read: Reader) -> tuple[int, int] | None:
    pos = 2
    for _ in range(JPEG_MAX_SEGMENTS):
        marker = read(pos, 4)
        if len(marker) < 4 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind == 0xFF:  # fill bytes before the marker: move to the last one
            fill = read(pos + 1, JPEG_FILL_READ)
            pos += len(fill) - len(fill.lstrip(b"\xff"))
        elif kind in JPEG_STANDALONE:
            pos += 2
        elif kind in JPEG_SOF:
            frame = read(pos + 5, 4)  # after the length and the sample precision
            if len(frame) < 4:
                return None
            height, width = struct.unpack(">HH", frame)
            return width, height
        elif kind in (0xD9, 0xDA):  # the image ends, or its scan starts, before any frame header
            return None
        else:
            (length,) = struct.unpack(">H", marker[2:4])
            if length < 2:
                return None
            pos += 2 + length
    return None
