"""Idempotency-Key for POST /v1/jobs and POST /v1/datasets.

The first request with a key reserves `dnnq:idem:{tenant}:{route}:{key}` with SET NX (24 h TTL)
before it creates anything, and records the created id afterwards. A repeat with the same body
gets the original resource back; a repeat with a different body is a 422; a repeat that arrives
while the first is still working is a 409 (retry shortly).
"""

from __future__ import annotations

import json
import re

import redis

from dnnq.service.errors import Problem
from dnnq.workers import keys

__all__ = ["IdempotencyKey", "reserve"]

_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces


class IdempotencyKey:
    """A reservation: call .complete(id) after creating the resource, .release() if creation failed."""

    def __init__(self, r: redis.Redis, redis_key: str, body_sha256: str, ttl: int) -> None:
        self.r, self.redis_key, self.body_sha256, self.ttl = r, redis_key, body_sha256, ttl

    def complete(self, resource_id: str) -> None:
        value = json.dumps({"body_sha256": self.body_sha256, "id": resource_id})
        self.r.set(self.redis_key, value, ex=self.ttl, xx=True)

    def release(self) -> None:
        self.r.delete(self.redis_key)


def reserve(
    r: redis.Redis, *, tenant: str, route: str, key: str | None, body_sha256: str, ttl: int
) -> tuple[IdempotencyKey | None, str | None]:
    """(reservation, None) for a new key; (None, id) to replay; (None, None) without a key."""
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
    if r.set(redis_key, pending, nx=True, ex=ttl):
        return IdempotencyKey(r, redis_key, body_sha256, ttl), None
    raw = r.get(redis_key)
    if raw is None:  # expired between SET NX and GET: treat as new
        return reserve(r, tenant=tenant, route=route, key=key, body_sha256=body_sha256, ttl=ttl)
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
