"""Content parts beyond text and `image_url`, as the Anthropic and Gemini adapters rebuild them:
a `file` (OpenAI's inline file: `file.file_data`, a data: URL, and `file.filename`), `input_audio`
(base64 `data` and its `format`), `input_image` and `input_text` (the Responses API's parts, sent by
clients that share code between the two APIs). Each is read here into what the adapters need; a
part that cannot be sent inline (a `file_id` names a file uploaded to OpenAI, which no other
provider can read) is the request's fault, refused with a 400 that names the part: dropping it
would have the model answer without the attachment as if it had read it. Also here: a data: URL's
type under its standard name, an image URL's type by its extension."""
from __future__ import annotations

import mimetypes
import urllib.parse
from typing import Any, NamedTuple

from router.request_view import TEXT_PART_TYPES
from service.providers.base import ErrorKind, UpstreamError

# Gemini's audio types (its audio guide); OpenAI's `input_audio.format` is "wav" or "mp3".
AUDIO_MIME_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3", "aiff": "audio/aiff", "aac": "audio/aac",
                    "ogg": "audio/ogg", "flac": "audio/flac"}


class Inline(NamedTuple):
    mime_type: str
    data: str  # base64
    filename: str | None = None


def refused(where: str, why: str, kind: ErrorKind = "bad_request") -> UpstreamError:
    """The request's part refused before any call; `unsupported` where another model may take it
    (a routed request fails over, one naming the model gets the 400)."""
    return UpstreamError(kind, f"{where}: {why}", code="unsupported_value", param=where)


def part_text(part: dict[str, Any]) -> str | None:
    """The text of a text part (an assistant's replayed refusal part is what it said), None for
    any other part."""
    if part.get("type") in TEXT_PART_TYPES:
        return str(part.get("text", ""))
    if part.get("type") == "refusal":
        return str(part.get("refusal", ""))
    return None


def unknown_part(where: str, kind: Any, provider: str) -> UpstreamError:
    """A part the adapter cannot translate (a `video_url` for a vLLM model): left out, the model
    would answer a question it was never shown; `unsupported`, so a routed request fails over to
    an OpenAI-compatible model that may read it."""
    return refused(where, f"{provider} models take no content parts of type {kind!r}", kind="unsupported")


# Names clients write for a type under another name: `image/jpg` is common (OpenAI takes it), and
# Anthropic refuses any media type outside its four.
TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}


def split_data_url(url: str, default_type: str) -> tuple[str, str]:
    """(the media type, lower-cased and under its standard name; the base64 data)."""
    header, _, data = url.partition(",")
    mime_type = header[5:].split(";")[0].strip().lower() or default_type
    return TYPE_ALIASES.get(mime_type, mime_type), data


# The image types a URL's extension names (the path's, before any query).
URL_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                   ".gif": "image/gif", ".heic": "image/heic", ".heif": "image/heif"}


def url_image_type(url: str) -> str | None:
    """The image type an https URL's extension names (`chart.png`: image/png); None for another."""
    path = urllib.parse.urlsplit(url).path.lower()
    return next((t for ext, t in URL_IMAGE_TYPES.items() if path.endswith(ext)), None)


def _by_file_id(where: str, provider: str) -> UpstreamError:
    return refused(where, f"a part given by file_id names a file uploaded to OpenAI, which {provider} cannot read; "
                   "send the content inline (file.file_data as a data: URL)")


def image_url(part: dict[str, Any], where: str, provider: str) -> str:
    """The https: or data: URL of an `image_url` part ({"url": ...}) or an `input_image` part (a string)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url:
        return url
    if part.get("file_id"):
        raise _by_file_id(where, provider)
    raise refused(where, "an image part without an image_url")


def file_part(part: dict[str, Any], where: str, provider: str) -> Inline:
    """A `file` part's content. `file_data` is a data: URL; bare base64 takes its type from the
    file name, else PDF (the only file type OpenAI's chat completions take)."""
    file = part.get("file") if isinstance(part.get("file"), dict) else {}
    data = file.get("file_data")
    filename = file.get("filename") if isinstance(file.get("filename"), str) else None
    if not isinstance(data, str) or not data:
        if file.get("file_id"):
            raise _by_file_id(where, provider)
        raise refused(where, "a file part without file.file_data")
    if data.startswith("data:"):
        mime_type, data = split_data_url(data, "application/pdf")
    else:
        mime_type = (mimetypes.guess_type(filename)[0] if filename else None) or "application/pdf"
    return Inline(mime_type, data, filename)


def audio_part(part: dict[str, Any], where: str) -> Inline:
    audio = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
    data, fmt = audio.get("data"), str(audio.get("format", "")).lower()
    if not isinstance(data, str) or not data:
        raise refused(where, "an input_audio part without input_audio.data")
    if fmt not in AUDIO_MIME_TYPES:
        raise refused(where, f"audio format {fmt!r} is not one of {', '.join(AUDIO_MIME_TYPES)}")
    return Inline(AUDIO_MIME_TYPES[fmt], data)
