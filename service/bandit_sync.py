"""Replicas that learn together: every reward one gateway's bandit learns from is shared over
Redis, so the bandits of several replicas behind one load balancer hold the same corrections
(each keeps its own exploration budget and its own random draws).

One Redis stream (`<prefix>:bandit`) carries two kinds of message:

* `obs`: a resolved reward (model, reduced context, reward, the predictor's P(good)); every
  other replica applies it with `ContextualBandit.update`.
* `fb`: feedback for a request this replica did not decide (the load balancer sent the client's
  `POST /v1/feedback` elsewhere). The replica that holds the decision resolves it and shares
  the `obs`; every replica hands it to `on_feedback` (the replica whose cache holds a rejected
  answer drops it). Regenerations and tool loops that cross replicas are recognised through
  the session memory in Redis (service/session_memory.py).

Publishing is one XADD from the thread that records the feedback (the feedback endpoint's
worker thread or a post-hook's), never on a request's latency path. A background thread reads
the stream with a blocking XREAD. Messages from before this replica started are not replayed:
a new replica learns from what happens while it runs, and from `retrain` for the rest.
"""
from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Callable

import numpy as np

from router.bandit import ContextualBandit, Observation
from service.background import Repeater

log = logging.getLogger(__name__)
STREAM_MAXLEN = 100_000  # approximate trim; a replica more than this far behind has restarted anyway


class BanditSync:
    def __init__(self, bandit: ContextualBandit, client: Any, prefix: str = "openclaw"):
        self.bandit = bandit
        self.r = client
        self.key = f"{prefix}:bandit"
        self.replica = uuid.uuid4().hex
        self._last_id: str | None = None
        self._worker = Repeater("bandit-sync", self._read)
        self.applied = 0  # messages from other replicas applied here
        self.on_feedback: Callable[[str, float], None] | None = None  # feedback another replica took

    def feedback(self, request_id: str, reward: float) -> None:
        """A reward for `request_id`: learn it here if this replica decided it, and tell the others."""
        obs = self.bandit.resolve(request_id, reward)
        if obs is not None:
            self._publish_obs(obs)
        else:
            self._publish({"kind": "fb", "request_id": request_id, "reward": repr(float(reward))})

    def _publish_obs(self, obs: Observation) -> None:
        self._publish({"kind": "obs", "model": obs.model, "context": json.dumps(np.asarray(obs.context).tolist()),
                       "reward": repr(obs.reward), "predicted": repr(obs.predicted), "p_std": repr(obs.p_std)})

    def _publish(self, fields: dict[str, str]) -> None:
        try:
            self.r.xadd(self.key, {"from": self.replica, **fields}, maxlen=STREAM_MAXLEN, approximate=True)
        except Exception as exc:  # Redis down: this replica still learns alone
            log.warning("bandit sync: could not publish to %s: %s", self.key, exc)

    def apply(self, fields: dict[str, str]) -> None:
        """One message of another replica."""
        if fields.get("from") == self.replica:
            return
        if fields.get("kind") == "obs":
            context = np.asarray(json.loads(fields["context"]), dtype=np.float64)
            if context.shape != (self.bandit.dim,):
                log.warning("bandit sync: ignoring an observation with a %s context (this bandit uses %d)",
                            context.shape, self.bandit.dim)
                return
            self.bandit.update(fields["model"], context, float(fields["reward"]), float(fields["predicted"]),
                               float(fields.get("p_std", 0.0)))
        elif fields.get("kind") == "fb":
            obs = self.bandit.resolve(fields["request_id"], float(fields["reward"]))
            if obs is not None:
                self._publish_obs(obs)
            if self.on_feedback is not None:
                self.on_feedback(fields["request_id"], float(fields["reward"]))
        self.applied += 1

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def _read(self) -> None:
        """One blocking read of the stream (half a second at most) and what it brought."""
        if self._last_id is None:  # where this replica joins the stream; a Redis outage delays it, never the server
            newest = self.r.xrevrange(self.key, count=1)
            self._last_id = newest[0][0] if newest else "0-0"
        for _, messages in self.r.xread({self.key: self._last_id}, count=500, block=500) or ():
            for message_id, fields in messages:
                self._last_id = message_id
                try:
                    self.apply(fields)
                except (KeyError, ValueError) as exc:
                    log.warning("bandit sync: skipping malformed message %s: %s", message_id, exc)
