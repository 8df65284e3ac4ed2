"""Idempotency-Key for POST /v1/jobs and POST /v1/datasets.

The first request with a key reserves `dnnq:idem:{tenant}:{route}:{key}` with SET NX before it
creates anything, and records the created id afterwards (kept 24 h). A repeat with the same body
gets the original resource back; a repeat with a different body is a 422; a repeat that arrives
while the first is still working is a 409 (retry shortly). The reservation itself lives only
`pending_ttl` seconds (longer than any creation takes): an API process that died between reserving
and recording frees the key then, not a day later.
"""

from __future__ import annotations

import json
import logging
import re

import redis

from dnnq.service.errors import Problem
from dnnq.workers import keys

__all__ = ["PENDING_TTL_SECONDS", "IdempotencyKey", "reserve"]

log = logging.getLogger("dnnq.api")

_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces


class IdempotencyKey:
    """A reservation: call .complete(id) after creating the resource, .release() if creation failed."""

    def __init__(self, r: redis.Redis, redis_key: str, body_sha256: str, ttl: int) -> None:
        self.r, self.redis_key, self.body_sha256, self.ttl = r, redis_key, body_sha256, ttl

    def complete(self, resource_id: str) -> None:
        value = json.dumps({"body_sha256": self.body_sha256, "id": resource_id})
        if not self.r.set(self.redis_key, value, ex=self.ttl, xx=True):
            log.warning("Idempotency-Key %s expired before its resource %s was recorded", self.redis_key, resource_id)

    def release(self) -> None:
        self.r.delete(self.redis_key)


# A reservation not completed by then is forgotten (its API process died): creating a job or a sweep
# takes milliseconds; a dataset's upload is reserved after its body arrived, before it is parsed.
PENDING_TTL_SECONDS = 120


def reserve(
    r: redis.Redis,
    *,
    tenant: str,
    route: str,
    key: str | None,
    body_sha256: str,
    ttl: int,
    pending_ttl: float = PENDING_TTL_SECONDS,
) -> tuple[IdempotencyKey | None, str | None]:
    """(reservation, None) for a new key; (None, id) to replay; (None, None) without a key. The
    reservation expires after ``pending_ttl`` seconds unless completed (then it is kept ``ttl``)."""
    if key is None:
        return None, None
    if not _KEY_RE.match(key):
        raise Problem(
            422,
            "Idempotency-Key must be 1-255 printable ASCII characters without spaces.",
            errors=[{"field": "Idempotency-Key", "message": "invalid format"}],
        )
    redis_key = keys.idempotency(tenant, route, key)
    pending = json.dumps({"body_sha256": body_sha256, "id": None})
    if r.set(redis_key, pending, nx=True, px=max(1, int(min(pending_ttl, ttl) * 1000))):
        return IdempotencyKey(r, redis_key, body_sha256, ttl), None
    raw = r.get(redis_key)
    if raw is None:  # expired between SET NX and GET: treat as new
        return reserve(
            r, tenant=tenant, route=route, key=key, body_sha256=body_sha256, ttl=ttl, pending_ttl=pending_ttl
        )
    stored = json.loads(raw)
    if stored.get("body_sha256") != body_sha256:
        raise Problem(
            422,
            "This Idempotency-Key was already used with a different request body; use a new key for a new request.",
            errors=[{"field": "Idempotency-Key", "message": "reused with a different body"}],
        )
    if stored.get("id") is None:
        raise Problem(
            409,
            "A request with this Idempotency-Key is still in progress; retry shortly.",
            headers={"Retry-After": "1"},
        )
    return None, stored["id"]
