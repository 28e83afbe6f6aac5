"""The key's requests-per-minute limit on client calls that route nothing and spend no tokens
(`POST /v1/route`, `POST /v1/feedback`): they count against the same minute as the key's chat
requests and are refused with the same 429, built here for both (`GovernanceHook` admits chat
requests, with their tokens)."""
from __future__ import annotations

import asyncio
from typing import Any

from service.errors import ApiError
from service.governance.auth import Caller
from service.governance.keys import VirtualKey
from service.governance.ratelimit import RateCheck


def key_rate_limited(auth: Any, key: VirtualKey, check: RateCheck) -> ApiError:
    """The 429 for a key whose minute is full (`check.refused`: "rpm" or "tpm"). `retry-after` is
    when the window next has room for this request: a client (the OpenAI SDK honours it up to a
    minute) that retries sooner would only be refused again."""
    verdict = str(check.refused)
    limit = key.rpm if verdict == "rpm" else key.tpm
    wait = check.retry_after_s()
    return auth.refuse(429, f"Rate limit of key '{key.name}' reached: {limit} {verdict.upper()}; "
                       f"the sliding minute has room for this request again in {wait} s.",
                       f"{verdict}_limit_exceeded", verdict, {"retry-after": str(wait), **check.headers()})


async def admit_call(app_state: Any, caller: Caller | None) -> None:
    """Count one call against its key's RPM; 429 `rpm_limit_exceeded` when the minute is full."""
    key = caller.key if caller is not None else None
    if key is None or key.rpm is None:
        return
    gov = app_state.governance
    # No tokens, so the key's TPM is no business of these calls.
    check = await asyncio.to_thread(gov.limiter.admit, key.id, key.rpm, None, 0)
    if check.refused is not None:
        raise key_rate_limited(gov.auth, key, check)
