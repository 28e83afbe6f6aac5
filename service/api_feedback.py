"""`POST /v1/feedback`: a client's verdict on an answer, stored beside the outcome log.

Body: `request_id` (the judged answer's `id`, also its `x-request-id` response header), and
either `score` in [0, 1] or `thumbs` ("up" = 1, "down" = 0); optional `label` (e.g. the task
or the failure kind) and `comment`. An unknown request id is a 404, so a typo cannot create
orphan feedback; one refused before any model was asked (invalid, over a budget) is a 409
`request_not_answered`: it got no answer to judge. With governance on, the same client keys as
chat are required, and a key may judge only the requests made with it: another key's request is
a 404 as well, answered no sooner than an unknown id's, so that its existence does not leak. The
master key (and open mode) may judge any. Each call counts against the key's requests per minute,
and one request id takes at most `MAX_FEEDBACK_PER_REQUEST` explicit verdicts (then 409). The
score reaches the exploring bandit at once (online update, no restart) and the retraining job later.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router.feedback_log import Feedback
from service.errors import ApiError, bad_request, invalid_body
from service.governance.auth import Caller, client_caller
from service.governance.request_limits import admit_call
from service.schemas import read_json_body

router = APIRouter()
MAX_BODY = 64 * 1024


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=200)
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    thumbs: Literal["up", "down"] | None = None
    label: str | None = Field(default=None, max_length=200)
    comment: str | None = Field(default=None, max_length=4000)

    @field_validator("label", "comment")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        # As the admin API's text fields: a NUL was stored and written raw into the shadow report's page.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("score", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # JSON true or "0.5" is not a score, though Python would read them as 1.0 and 0.5.
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError("must be a number in [0, 1]")
        return value

    @model_validator(mode="after")
    def _one_verdict(self) -> "FeedbackBody":
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("give exactly one of score (a number in [0, 1]) or thumbs ('up' or 'down')")
        return self

    @property
    def reward(self) -> float:
        return float(self.score) if self.score is not None else (1.0 if self.thumbs == "up" else 0.0)


def parse_feedback(raw: object) -> FeedbackBody:
    if not isinstance(raw, dict):
        raise bad_request("the feedback body must be a JSON object")
    try:
        return FeedbackBody.model_validate(raw)
    except ValidationError as exc:
        raise invalid_body(exc, list(FeedbackBody.model_fields)) from None


OWNER_WAIT_S = 1.5  # longer than an outcome row takes to be written (post-hooks, then a 0.05 s batch)
OWNER_POLL_S = 0.1
# Explicit verdicts one request id takes: a client may change its mind, not fill the log.
MAX_FEEDBACK_PER_REQUEST = 20
_RECORDING = threading.Lock()


@router.post("/v1/feedback")
async def post_feedback(request: Request) -> JSONResponse:
    caller = await client_caller(request.app.state, request.headers)
    await admit_call(request.app.state, caller)
    learning = getattr(request.app.state, "learning", None)
    if learning is None or learning.feedback_log is None:
        raise ApiError(503, "feedback needs an outcome log (server.db = sqlite:///PATH or postgresql://...)", code="feedback_unavailable")
    body = parse_feedback(await read_json_body(request, MAX_BODY))
    if not await _visible_request(learning, body.request_id, caller):
        raise ApiError(404, f"No request with id {body.request_id!r} is known to this gateway (an answer's `id`, or its "
                       "x-request-id header, names its request).", code="request_not_found", param="request_id")
    outcome_log = getattr(request.app.state.gateway, "outcome_log", None)
    row = await asyncio.to_thread(outcome_log.get, body.request_id) if outcome_log is not None else None
    if _unanswered(row):
        raise ApiError(409, f"Request {body.request_id!r} got no answer to judge: it was refused before any model was "
                       f"asked ({(row['error'] or row['status'])[:200]}).", code="request_not_answered", param="request_id")
    fb = Feedback(body.request_id, body.reward, source="explicit", signal="score" if body.score is not None else "thumbs",
                  label=body.label, comment=body.comment)
    await asyncio.to_thread(_record_within_cap, learning, fb)
    return JSONResponse({"object": "feedback", "request_id": fb.request_id, "score": fb.score, "signal": fb.signal})


async def _visible_request(learning: Any, request_id: str, caller: Caller | None) -> bool:
    """Whether the request exists and the caller may judge it. Another replica may have answered
    it a moment ago (its outcome row is written after its post-hooks, in batches), so an id not
    found is looked up again until a deadline; another key's id is looked up the same way until
    the same deadline, so its 404 comes no sooner than an unknown id's."""
    deadline = time.monotonic() + OWNER_WAIT_S
    while True:
        owner = await asyncio.to_thread(learning.owner, request_id)
        if owner is not None and (caller is None or caller.may_see(owner)):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(OWNER_POLL_S, left))


def _unanswered(row: dict | None) -> bool:
    """Whether a logged request got no answer a verdict could be about: refused before routing
    (`rejected`: invalid), or an error before any model was called (a budget, a key's limit, every
    model skipped). Not one its models failed: a verdict on that judges them, as the implicit
    `error` does. None (its row not written yet) is a request this replica has just answered."""
    if row is None:
        return False
    return row["status"] == "rejected" or (row["status"] == "error"
                                           and all(a.get("status") == "skipped" for a in row.get("attempts") or ()))


def _record_within_cap(learning: Any, fb: Feedback) -> None:
    # Counted and written under one lock: verdicts sent all at once would otherwise each see room.
    # Learning from it (the bandit, a Redis publish) happens outside, so a slow Redis holds up no
    # other request's feedback.
    with _RECORDING:
        given = sum(row["source"] == "explicit" for row in learning.feedback_log.feedback(fb.request_id))
        if given >= MAX_FEEDBACK_PER_REQUEST:
            # 409, not 429: no wait makes room, the request's feedback is complete.
            raise ApiError(409, f"Request {fb.request_id!r} has {given} verdicts already, the most one request takes; "
                           "the latest of them is the one that counts.", code="feedback_limit_reached", param="request_id")
        learning.feedback_log.add_feedback(fb)
    learning.learn(fb)
