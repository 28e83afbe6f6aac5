"""Images count by their size: an inline PNG, JPEG, GIF or WebP is read from its header bytes and
priced by OpenAI's vision formula; a URL or an unreadable header keeps the fixed estimate. Checked
on real files (Pillow, which matplotlib brings), in the routing view, in the context-window check
through a running gateway, and in a governed gateway's reservation. A crafted header costs a bounded
walk, a request sizes only its first images, and a governed request reads each header once."""
from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import httpx
import pytest
from PIL import Image

from router import image_size, request_view
from router.image_size import data_url_size
from router.request_view import IMAGE_TOKENS_DEFAULT, image_tokens, view_chat_request, vision_tokens
from service.governance.runtime import Governance, GovernanceSettings
from tests.fake_upstream import FakeUpstream, ok
from tests.gateway_harness import QualityRouter, Running, fake_config

MASTER = "mk-images-" + "4" * 24


def data_url(fmt: str, size: tuple[int, int], **save) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, fmt, **save)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def png_header(width: int, height: int) -> str:
    """A PNG's signature and IHDR alone: a size no real picture in a test could afford."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return "data:image/png;base64," + base64.b64encode(raw + b"\x00" * 64).decode()


def image(url: str, detail: str | None = None) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}


@pytest.mark.parametrize(("width", "height", "detail", "tokens"), [
    (1024, 1024, "high", 765),   # OpenAI's examples: 768x768, four tiles
    (2048, 4096, "high", 1105),  # to 1024x2048, then 768x1536: six tiles
    (4096, 8192, "low", 85),
    (1920, 1080, "auto", 1105),  # auto is priced as high: 1365x768, six tiles
    (512, 512, None, 255),       # a small picture is not enlarged: one tile
    (100, 40, "high", 255),
    (2048, 768, "high", 1445),   # the most: 4x2 tiles
    (40000, 40000, "high", 765),
    (100000, 1, "high", 765),    # 2048 wide, a sliver high: one row of four tiles
])
def test_openais_formula(width, height, detail, tokens):
    assert vision_tokens(width, height, detail) == tokens


@pytest.mark.parametrize(("fmt", "save"), [
    ("PNG", {}), ("GIF", {}), ("JPEG", {}), ("JPEG", {"progressive": True}),
    ("WEBP", {"quality": 80}), ("WEBP", {"lossless": True}), ("WEBP", {"exif": b"Exif\x00\x00" + b"x" * 40}),
])
@pytest.mark.parametrize("size", [(1, 1), (640, 480), (3000, 17), (17, 3000)])
def test_the_size_is_read_from_real_files(fmt, save, size):
    assert data_url_size(data_url(fmt, size, **save)) == size


def test_only_the_header_is_decoded(monkeypatch):
    # A JPEG whose frame header comes after 60 KB of EXIF and a 3 KB ICC profile: the walk
    # decodes a few bytes per segment, never the segments themselves nor the picture.
    jpeg = data_url("JPEG", (2000, 1500), exif=b"Exif\x00\x00" + b"\x00" * 60000, icc_profile=b"\x00" * 3000)
    decoded = []
    real = image_size.base64.b64decode

    def spy(chunk, *args, **kwargs):
        out = real(chunk, *args, **kwargs)
        decoded.append(len(out))
        return out

    monkeypatch.setattr(image_size.base64, "b64decode", spy)
    assert data_url_size(jpeg) == (2000, 1500)
    assert sum(decoded) < 200, decoded
    decoded.clear()
    assert data_url_size(data_url("PNG", (3000, 3000))) == (3000, 3000)
    assert sum(decoded) <= 33


def counting_reads(monkeypatch) -> list[int]:
    """The byte counts the header reader is asked for, one entry a read."""
    reads: list[int] = []
    real = image_size._base64_reader

    def wrapped(text, offset):
        read = real(text, offset)

        def counted(start, n):
            reads.append(n)
            return read(start, n)

        return counted

    monkeypatch.setattr(image_size, "_base64_reader", wrapped)
    return reads


def jpeg_url(raw: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(raw).decode()


@pytest.mark.parametrize("raw", [
    b"\xff\xd8" + b"\xff\xe0\x00\x02" * 1040,      # empty APP0 segments, never a frame header
    b"\xff\xd8" + b"\xff\xff\xe0\x00\x02" * 1040,  # each after a fill byte
    b"\xff\xd8" + b"\xff" * 20000,                  # fill bytes and nothing else
], ids=["segments", "fill-and-segments", "fill"])
def test_a_jpeg_that_never_reaches_its_frame_header_costs_a_bounded_walk(monkeypatch, raw):
    # Each such image walked 1,024 steps; a thousand of them fit in an 8 MB body, and the
    # walk runs on the event loop. Now: at most 64 steps of two small reads each.
    reads = counting_reads(monkeypatch)
    assert data_url_size(jpeg_url(raw)) is None
    assert len(reads) <= 2 * 64 + 1 and sum(reads) <= 64 * (4 + 64) + 30, (len(reads), sum(reads))
    reads.clear()
    assert image_tokens([{"role": "user", "content": [image(jpeg_url(raw))]}]) == IMAGE_TOKENS_DEFAULT


def test_a_run_of_fill_bytes_is_skipped_a_window_at_a_time(monkeypatch):
    # A real JPEG with 300 fill bytes before its frame header: still read, in a few reads.
    raw = base64.b64decode(data_url("JPEG", (640, 480)).partition(",")[2])
    sof = raw.index(b"\xff\xc0")
    reads = counting_reads(monkeypatch)
    assert data_url_size(jpeg_url(raw[:sof] + b"\xff" * 300 + raw[sof:])) == (640, 480)
    assert len(reads) <= 20, reads


def sized_urls(monkeypatch) -> list[str]:
    """The data URLs whose header the routing view reads, in order, from now on."""
    sized = []
    real = request_view.data_url_size

    def spy(url):
        sized.append(url)
        return real(url)

    monkeypatch.setattr(request_view, "data_url_size", spy)
    return sized


def test_only_the_first_images_of_a_request_are_sized(monkeypatch):
    from router.request_view import IMAGES_SIZED

    sized = sized_urls(monkeypatch)
    wide = png_header(2048, 768)  # 1,445 tokens read, 765 at the fixed estimate
    # Neither a URL nor a `detail: low` image (85 whatever its size) has a header worth reading.
    free = [image("https://example.com/a.png"), image(wide, "low")]
    content = free + [image(wide)] * (IMAGES_SIZED + 10)
    view = view_chat_request({"messages": [{"role": "user", "content": content}]})
    assert len(sized) == IMAGES_SIZED == 64
    expected = IMAGE_TOKENS_DEFAULT + 85 + IMAGES_SIZED * 1445 + 10 * IMAGE_TOKENS_DEFAULT
    assert view.image_tokens == expected and view.input_tokens == expected


@pytest.mark.parametrize("url", [
    "https://example.com/cat.png",
    "data:image/png,%89PNG",                               # not base64
    "data:image/png;base64,",                              # empty
    "data:image/png;base64,iVBORw0KGgo",                   # cut inside the signature
    "data:image/bmp;base64," + base64.b64encode(b"BM" + b"\x00" * 60).decode(),
    "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10" + b"\x00" * 14 + b"\xff\xda").decode(),
    "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe1\xff\xff").decode(),  # runs off the end
    "data:image/png;base64," + base64.encodebytes(b"\x00" * 60).decode(),  # line breaks
    png_header(0, 10),
])
def test_an_unreadable_image_keeps_the_fixed_estimate(url):
    assert data_url_size(url) is None
    assert image_tokens([{"role": "user", "content": [image(url)]}]) == IMAGE_TOKENS_DEFAULT
    assert image_tokens([{"role": "user", "content": [image(url, "low")]}]) == 85


def test_the_routing_view_counts_inline_images_by_size():
    def tokens(*parts) -> int:
        return view_chat_request({"messages": [{"role": "user", "content": list(parts)}]}).input_tokens

    small = data_url("PNG", (300, 200))
    wide = png_header(2048, 768)
    assert tokens(image(small)) == 255
    assert tokens(image(wide)) == 1445
    assert tokens(image(wide, "low")) == 85
    assert tokens(image("https://example.com/a.png")) == IMAGE_TOKENS_DEFAULT
    # The Responses API's part: the URL as a string, its detail beside it.
    assert tokens({"type": "input_image", "image_url": small}) == 255
    assert tokens({"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"}) == 85
    assert tokens({"type": "input_image", "image_url": wide, "detail": ["high"]}) == 1445  # a detail of no type: auto


VISION = ["vision", "tools", "json"]


def test_small_images_no_longer_exclude_a_model_whose_window_they_fit(upstream, tmp_path):
    # Ten 64x64 pictures bill 2,550 tokens; at the fixed 765 they counted 7,650, past m1's 4,096.
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", models=[
        {"name": "m1", "context_window": 4096, "capabilities": VISION},
        {"name": "m2", "context_window": 100000, "capabilities": VISION},
    ])
    gw = Running(config, router=QualityRouter({"m1": 0.9, "m2": 0.5}))
    try:
        def route(*parts) -> dict:
            body = {"model": "auto", "max_tokens": 100,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "What differs?"}, *parts]}]}
            r = httpx.post(f"{gw.base_url}/route", json=body, timeout=10)
            assert r.status_code == 200, r.text
            return r.json()

        icon = data_url("PNG", (64, 64))
        decided = route(*[image(icon) for _ in range(10)])
        assert decided["model"] == "m1" and 2550 <= decided["request"]["input_tokens"] < 2600
        # However many pixels a header claims, an image counts at most 1,445 tokens.
        huge = route(*[image(png_header(60000, 60000)) for _ in range(3)])
        assert huge["model"] == "m1" and huge["request"]["input_tokens"] < 3 * 765 + 50
        # Six of the widest count 8,670 tokens: m1 is rightly out.
        assert route(*[image(png_header(2048, 768)) for _ in range(6)])["model"] == "m2"
    finally:
        gw.stop()


@pytest.fixture
def governed(tmp_path):
    """A governed gateway whose key `viewer` has a day budget: (gateway, governance, its secret)."""
    up = FakeUpstream().start()
    for m in ("m1", "m2"):
        up.default(m, ok("fine"))
    config = fake_config(up.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", models=[
        {"name": "m1", "in": 10.0, "out": 10.0, "context_window": 100000, "capabilities": VISION},
        {"name": "m2", "in": 1.0, "out": 1.0, "context_window": 100000, "capabilities": VISION},
    ])
    gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov.sqlite", master_key=MASTER))
    gw = Running(config, router=QualityRouter({"m1": 0.9, "m2": 0.5}), governance=gov)
    admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
    try:
        made = admin.post("/admin/keys", json={"name": "viewer"}).json()
        admin.post("/admin/budgets", json={"scope": "key", "scope_id": made["key"]["id"], "period": "day", "limit_usd": 10})
        yield gw, gov, made["secret"]
    finally:
        admin.close()
        gw.stop()
        up.stop()


def reserved(governed, *urls: str) -> int:
    """The nano-USD a governed request for m1 with these images reserved."""
    gw, gov, secret = governed
    r = httpx.post(f"{gw.base_url}/chat/completions", timeout=10, headers={"authorization": f"Bearer {secret}"},
                   json={"model": "m1", "max_tokens": 10, "messages": [
                       {"role": "user", "content": [{"type": "text", "text": "Describe it."}, *map(image, urls)]}]})
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the spend row is written after the answer
        with gov.db.tx() as tx:
            row = tx.one("SELECT reserved_nusd FROM gov_spend WHERE request_id = ?", (request_id,))
        if row is not None:
            return int(row["reserved_nusd"])
        time.sleep(0.02)
    raise AssertionError("no spend row")


def test_a_reservation_counts_an_inline_image_by_its_size(governed):
    # Same text, same model: 1,445 tokens against 255, at $10 per million input tokens.
    gap = reserved(governed, png_header(2048, 768)) - reserved(governed, png_header(64, 64))
    assert gap >= (1445 - 255) * 10_000, gap  # nano-USD per token at $10/M


def test_a_governed_request_reads_each_header_once(governed, monkeypatch):
    # The reservation takes the images' tokens from the routing view instead of walking the
    # images again: each header is read once a request.
    sized = sized_urls(monkeypatch)
    wide, small = png_header(2048, 768), png_header(64, 64)
    three_wide = reserved(governed, wide, wide, wide)
    assert len(sized) == 3, len(sized)
    assert three_wide - reserved(governed, small, small, small) >= 3 * (1445 - 255) * 10_000
