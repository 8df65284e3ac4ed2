"""FastAPI dependencies: settings, Redis, artifact store, and the caller's tenant.

With API keys configured every route but /healthz requires `Authorization: Bearer <key>`.
Keys are "tenant:key" (the tenant is named) or a bare "key" (its tenant is "k" + the first 12 hex
digits of sha256(key), so bare keys never share data and the key never appears in Redis).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import weakref
from pathlib import Path
from typing import Annotated

import redis
import redis.asyncio as aioredis
from fastapi import Depends, Request

from dnnq.service.errors import Problem
from dnnq.service.settings import ApiSettings
from dnnq.workers.artifact_store import ArtifactStore

__all__ = [
    "PUBLIC_TENANT",
    "AsyncRds",
    "AsyncRedisByLoop",
    "Rds",
    "Settings",
    "Store",
    "Tenant",
    "load_api_keys",
    "parse_api_keys",
    "make_redis",
    "require_tenant",
    "tenant_for",
]

PUBLIC_TENANT = "public"
_TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Below this a key is warned about at start (still accepted: tests and private setups use short ones).
MIN_KEY_LENGTH = 16


def parse_api_keys(api_keys: str | None, api_keys_file: str | None) -> list[tuple[bytes, str]]:
    """(sha256 of the key, tenant) pairs from DNNQ_API_KEYS's and DNNQ_API_KEYS_FILE's values; [] = auth
    off. The process keeps the keys' digests only.

    Either one set but holding no key is a ValueError, not "auth off": `DNNQ_API_KEYS=","` or an empty
    keys file would otherwise open the API to anyone, past `dnnq up`'s refusal to listen on a public
    address without keys. The messages never show a key."""
    entries: list[str] = []
    if api_keys and api_keys.strip():
        entries += api_keys.split(",")
    if api_keys_file:
        try:
            text = Path(api_keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"DNNQ_API_KEYS_FILE={api_keys_file} cannot be read ({exc}); fix the path") from None
        entries += [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    keys: list[tuple[bytes, str]] = []
    short: list[str] = []  # tenants of keys short enough to guess
    for raw in entries:
        raw = raw.strip()
        if not raw:
            continue
        tenant, sep, key = raw.partition(":")
        if not sep:
            key, tenant = raw, "k" + hashlib.sha256(raw.encode()).hexdigest()[:12]
        if not key or not _TENANT_RE.match(tenant):
            raise ValueError(
                "DNNQ_API_KEYS entries must be 'key' or 'tenant:key' with a tenant of letters, digits, "
                "'_', '.', '-' (at most 64); one entry is malformed (not shown: it holds a key)."
            )
        keys.append((hashlib.sha256(key.encode()).digest(), tenant))  # what tenant_for compares
        if len(key) < MIN_KEY_LENGTH:
            short.append(tenant)
    if short:
        logging.getLogger("dnnq.api").warning(
            "API keys shorter than %d characters (tenants %s) can be guessed one request at a time: give "
            "them random keys, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            MIN_KEY_LENGTH,
            ", ".join(sorted(set(short))[:10]),
        )
    if (entries or api_keys_file) and not keys:
        raise ValueError(
            "DNNQ_API_KEYS / DNNQ_API_KEYS_FILE is set but holds no key: give at least one 'tenant:key' "
            "entry, or unset both to run without API keys (loopback only)."
        )
    return keys


def load_api_keys(settings: ApiSettings) -> list[tuple[bytes, str]]:
    """(sha256 of the key, tenant) pairs from DNNQ_API_KEYS and DNNQ_API_KEYS_FILE; [] = auth off."""
    return parse_api_keys(settings.api_keys, settings.api_keys_file)


def _redis_options(settings: ApiSettings) -> dict:
    """Decoded strings, short timeouts so a dead Redis is a quick 503."""
    from dnnq.workers.settings import redis_client_options

    return dict(
        **redis_client_options(),
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=min(2.0, settings.redis_socket_timeout),
        health_check_interval=30,
    )


class AsyncRedisByLoop:
    """One redis.asyncio client per event loop, made on first use.

    A redis.asyncio connection belongs to the loop that opened it. A server process has one loop, so
    this is one client; Starlette's TestClient may run each request on a new loop, which gets its own.
    """

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self) -> aioredis.Redis:
        from dnnq.workers.settings import DEFAULT_REDIS_URL

        loop = asyncio.get_running_loop()
        client = self.clients.get(loop)
        if client is None:
            # A blocking pool: past max_connections a call waits for a free connection (up to the socket
            # timeout) instead of raising MaxConnectionsError at once, which a burst of requests or of
            # open event streams turned into 503s for every tenant.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.settings.redis_url or DEFAULT_REDIS_URL,
                max_connections=self.settings.redis_max_connections,
                timeout=self.settings.redis_socket_timeout,
                **_redis_options(self.settings),
            )
            client = aioredis.Redis(connection_pool=pool)
            client.auto_close_connection_pool = True  # aclose() closes the pool too (Redis.from_pool's way)
            self.clients[loop] = client
        return client

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self.clients.pop(loop, None)
        if client is not None:
            await client.aclose()


def make_redis(settings: ApiSettings) -> redis.Redis:
    """A shared client: decoded strings, short timeouts so a dead Redis is a quick 503."""
    from dnnq.workers.settings import DEFAULT_REDIS_URL

    return redis.Redis.from_url(settings.redis_url or DEFAULT_REDIS_URL, **_redis_options(settings))


# The dependencies below are `async def` although they never await: they do no I/O, and FastAPI runs a
# plain `def` dependency in the thread pool, a thread hop per dependency per request (the hot path
# GET /v1/jobs/{id} had four).
async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


async def get_async_redis(request: Request) -> aioredis.Redis:
    """For `async def` routes on the hot path: awaiting Redis costs no thread hop."""
    return request.app.state.async_redis.get()


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def tenant_for(keys: list[tuple[bytes, str]], authorization: str) -> str | None:
    """The tenant whose key an Authorization header value carries ("Bearer <key>"); None when none
    matches. Every key is compared, in constant time, with no early exit: timing reveals nothing.
    Shared by require_tenant and the fast lane (service/fastlane.py), so both admit the same callers."""
    scheme, _, given = authorization.partition(" ")
    # Digests, not the keys themselves: compare_digest returns at once on a length mismatch, which would
    # tell a caller how long the keys are.
    given_digest = hashlib.sha256(given.strip().encode()).digest()
    tenant = None
    for key_digest, key_tenant in keys:
        if hmac.compare_digest(given_digest, key_digest) and scheme.lower() == "bearer":
            tenant = key_tenant
    return tenant


async def require_tenant(request: Request) -> str:
    """The caller's tenant; 401 with WWW-Authenticate when keys are set and none matches."""
    keys: list[tuple[bytes, str]] = request.app.state.api_keys
    if not keys:
        return PUBLIC_TENANT
    authorization = request.headers.get("authorization", "")
    tenant = tenant_for(keys, authorization)
    if tenant is None:
        given = authorization.partition(" ")[2].strip()
        reason = "missing" if not given else "invalid"
        raise Problem(
            401,
            f"API key {reason}: send 'Authorization: Bearer <key>'.",
            headers={
                "WWW-Authenticate": 'Bearer realm="dnnq", error="invalid_token"' if given else 'Bearer realm="dnnq"'
            },
        )
    return tenant


Settings = Annotated[ApiSettings, Depends(get_settings)]
Rds = Annotated[redis.Redis, Depends(get_redis)]
AsyncRds = Annotated[aioredis.Redis, Depends(get_async_redis)]
Store = Annotated[ArtifactStore, Depends(get_store)]
Tenant = Annotated[str, Depends(require_tenant)]
