"""Sample payloads and upstream rules that several test modules share: a Messages API answer, PDF
files built byte by byte (page trees, compressed object streams), OpenAI's rule against message
properties its chat schema does not know, and the example outcome table under RouterBench's names."""
from __future__ import annotations

import base64
from typing import Any

CLAUDE_OK = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
             "content": [{"type": "text", "text": "from claude"}], "stop_reason": "end_turn", "stop_sequence": None,
             "usage": {"input_tokens": 10, "output_tokens": 3}}

PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"


def pdf(*objects: bytes, version: bytes = b"1.5") -> bytes:
    """A PDF file of `objects` (each an object's body: its dictionary, and its stream if it has one), numbered from 1."""
    numbered = b"".join(b"%d 0 obj\n%s\nendobj\n" % (i, body) for i, body in enumerate(objects, 1))
    return b"%PDF-" + version + b"\n" + numbered + b"%%EOF\n"


def stream(dictionary: bytes, data: bytes) -> bytes:
    """A stream object's body: `dictionary`'s entries with the data's /Length, then the data."""
    return b"<< %s /Length %d >>\nstream\n" % (dictionary, len(data)) + data + b"\nendstream"


def object_stream(data: bytes, count: int) -> bytes:
    """A compressed object stream of `count` objects, where PDF 1.5 writers put page objects; `data`
    is its data as sent (zlib-compressed, or not, for a broken file)."""
    return stream(b"/Type /ObjStm /N %d /First 0 /Filter /FlateDecode" % count, data)


def page_tree_pdf(pages: int) -> bytes:
    """An uncompressed PDF of `pages` pages with its page tree, whose root gives their /Count."""
    kids = b" ".join(b"%d 0 R" % (i + 3) for i in range(pages))
    return pdf(b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
               *([PAGE] * pages), version=b"1.4")


def file_part(data: bytes, name: str = "report.pdf") -> dict[str, Any]:
    """An OpenAI `file` content part carrying a PDF inline."""
    return {"type": "file", "file": {"filename": name, "file_data": "data:application/pdf;base64," + base64.b64encode(data).decode()}}


# The message properties OpenAI's chat schema allows, by role.
OPENAI_MESSAGE_PROPERTIES = {"system": {"role", "content", "name"}, "developer": {"role", "content", "name"},
                             "user": {"role", "content", "name"}, "tool": {"role", "content", "tool_call_id"},
                             "assistant": {"role", "content", "name", "tool_calls", "refusal", "audio", "function_call"}}


def openai_unexpected_property(messages: list[dict[str, Any]]) -> str | None:
    """OpenAI's 400 message for the first message carrying a property its role does not allow
    (replayed reasoning, another API's fields), in OpenAI's words; None when there is none."""
    for i, message in enumerate(messages):
        extra = sorted(set(message) - OPENAI_MESSAGE_PROPERTIES.get(message.get("role"), set()))
        if extra:
            return f"Additional properties are not allowed ('{extra[0]}' was unexpected) - 'messages.{i}'"
    return None


def example_outcomes_as_routerbench() -> Any:
    """data/example_outcomes.csv (a pandas DataFrame) with its models named as the shipped router knows them."""
    from pathlib import Path

    import pandas as pd

    names = {"small-7b": "mistral-7b-chat", "medium-34b": "mixtral-8x7b-chat", "large-frontier": "gpt-4-1106-preview"}
    df = pd.read_csv(Path(__file__).resolve().parent.parent / "data" / "example_outcomes.csv")
    return df.rename(columns=lambda c: next((c.replace(f"__{k}", f"__{v}") for k, v in names.items() if c.endswith(f"__{k}")), c))
