"""create_app(): the FastAPI application of the dnnq API process."""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dnnq.service import docs, sandbox
from dnnq.service.contract import operation_id, readable_forms
from dnnq.service.deps import AsyncRedisByLoop, load_api_keys, make_redis, require_tenant, tenant_for
from dnnq.service.errors import Problem, document_problems, install_error_handlers, problem_response, response_for
from dnnq.service.guards import KeylessGuardMiddleware, NoSniffMiddleware
from dnnq.service.jobdesk import JobDesk
from dnnq.service.routes.predict import BINARY_PREDICT_TYPES, LIMIT_HEADERS, limit_headers
from dnnq.service.settings import ApiSettings, get_api_settings
from dnnq.service.sse import StreamSlots
from dnnq.workers import jobs, recovery
from dnnq.workers.artifact_store import ArtifactStore

__all__ = ["create_app"]

API_VERSION = "0.1.0"
log = logging.getLogger("dnnq.api")

# The routes that take a multipart upload (DNNQ_MAX_UPLOAD_BYTES); every other body has a smaller limit.
UPLOAD_PATHS = frozenset({"/v1/datasets"})
# Multipart framing around an uploaded file (boundaries, part headers, small form fields).
_MULTIPART_SLACK = 64 * 1024


class BodyLimitMiddleware:
    """413 for bodies over the limit, counted while they stream in (before any parsing).

    Uploads (multipart) may be up to max_upload_bytes; every other body up to max_json_body_bytes.
    """

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings

    def _limit(self, scope: Scope, ctype: bytes) -> tuple[int, str]:
        # The larger limits go to the one route that takes each kind of body, never by Content-Type alone:
        # a multipart body sent to a JSON route would otherwise be read whole into memory.
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :]
        kind = ctype.split(b";")[0].strip().lower()
        if kind.startswith(b"multipart/") and path.rstrip("/") in UPLOAD_PATHS:
            return self.settings.max_upload_bytes + _MULTIPART_SLACK, "DNNQ_MAX_UPLOAD_BYTES"
        if kind in BINARY_PREDICT_TYPES and path.endswith("/predict"):
            return self.settings.max_predict_body_bytes, "DNNQ_MAX_PREDICT_BODY_BYTES"
        return self.settings.max_json_body_bytes, "DNNQ_MAX_JSON_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        ctypes = [value for name, value in scope.get("headers") or [] if name.lower() == b"content-type"]
        if len(ctypes) > 1:
            # This middleware and the routes must judge the same Content-Type; with two, they would not
            # (FastAPI reads the first, a dict of the headers keeps the last).
            response = problem_response(400, "More than one Content-Type header; send exactly one.")
            return await response(scope, receive, send)
        limit, setting = self._limit(scope, ctypes[0] if ctypes else b"")
        detail = (
            f"Request body is larger than the limit of {limit} bytes ({setting}); "
            "send a smaller file or ask the operator to raise the limit."
        )
        # a predict's 413 states predict's limits too, as the route's own answers do
        headers = limit_headers(self.settings) if scope["path"].endswith("/predict") else None
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = problem_response(413, detail, headers=headers)
            return await response(scope, receive, send)
        seen, exceeded = 0, False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Stop the app reading (it sees a disconnect) and answer 413 ourselves below.
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await problem_response(413, detail, headers=headers)(scope, receive, send)


# Every route under this prefix takes the caller's tenant (service.deps.Tenant); the rest (/healthz,
# /readyz, the dashboard, /docs, /openapi.json) is public, and /metrics checks its own operator key.
AUTHENTICATED_PREFIX = "/v1"


class AuthGateMiddleware:
    """With API keys on, a /v1 request without a valid key gets its 401 before its body is read.

    FastAPI reads (and parses: a multipart upload is spooled whole) the body before it runs the route's
    dependencies, so without this gate a caller with no key could make the API read and parse an upload.
    The routes' Tenant dependency stays the per-route truth; this gate only answers earlier, with the
    same Problem (service.deps.require_tenant).
    """

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.state = fastapi_app.state

    def _guarded(self, scope: Scope) -> bool:
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :]
        return path == AUTHENTICATED_PREFIX or path.startswith(AUTHENTICATED_PREFIX + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keys = self.state.api_keys
        # The start-up warm-up's own requests (_warm_routes, fixed bodies, no key) go on to the routes.
        if scope["type"] != "http" or not keys or not self._guarded(scope) or scope.get(WARMUP_SCOPE_KEY):
            return await self.app(scope, receive, send)
        authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        if tenant_for(keys, authorization) is not None:
            return await self.app(scope, receive, send)
        try:  # raises the 401 the route's Tenant dependency would, word for word
            await require_tenant(Request(scope))
        except Problem as problem:
            # The body stays unread: uvicorn discards what the client still sends after this answer,
            # without buffering it, and the connection then serves the next request.
            return await response_for(problem)(scope, receive, send)
        return await self.app(scope, receive, send)


class RequestMetricsMiddleware:
    """dnnq_http_request_duration_seconds by route template, method and status."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if not scope.get(WARMUP_SCOPE_KEY):  # the API's own start-up requests (_warm_routes) are not traffic
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self.histogram.labels(template, scope["method"], str(status["code"])).observe(
                    time.perf_counter() - start
                )


def _make_store(settings: ApiSettings) -> ArtifactStore:
    from dnnq.workers.artifact_store import open_store

    # the store the workers write: DNNQ_ARTIFACTS_URL's object store, or DNNQ_DATA_DIR/artifacts;
    # StoreConfigError (one line: what to fix) stops the start-up
    store = open_store(settings)
    store.check()
    return store


def _preload() -> None:
    """Import now what the first POST /v1/jobs would import while its client waits (every request that
    arrives meanwhile queues behind it): the training config (models: NumPy only, CuPy is imported
    lazily and never here)."""
    import dnnq.models  # noqa: F401


WARMUP_SCOPE_KEY = "dnnq.warmup"  # marks the start-up requests below: the metrics leave them out

# Requests that reach the hot endpoints and stop at validation (422): no Redis, nothing written.
_WARMUP_REQUESTS = (("POST", "/v1/jobs", b"", b"{}"), ("GET", "/v1/jobs/warmup", b"history=invalid", b""))


async def _warm_routes(app: FastAPI) -> None:
    """Pay each process's first-request costs now, not while a burst of clients queues behind them
    (docs/perf.md): FastAPI reading each endpoint's source once for its error context, compiling the
    tokenizer's regexes, building the middleware stack and the included routers' routes.
    The requests go through the whole ASGI app, as uvicorn would send them: the router alone is not
    enough (FastAPI's endpoint wrapper needs the exit stack its middleware puts in the scope)."""
    for method, path, query, body in _WARMUP_REQUESTS:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 0),
            WARMUP_SCOPE_KEY: True,
        }
        sent = False

        async def receive(body: bytes = body) -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(_message: Message) -> None:
            return None

        try:
            await app(scope, receive, send)
        except Exception:
            log.debug("route warm-up %s %s failed", method, path, exc_info=True)


# A burst of concurrent requests needs as many pooled connections as requests in flight; each new one
# is a TCP connect and a CLIENT SETINFO round trip on the event loop (docs/perf.md).
REDIS_CONNECTIONS_AT_START = 16


async def _open_redis_connections(client: Any, count: int) -> None:
    """Grow the client's pool to `count` connections: concurrent PINGs each take a connection of their
    own, and give it back to the pool, open, when they are answered."""
    await asyncio.gather(*(client.ping() for _ in range(count)))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    await _warm_routes(app)
    try:  # the upload parser's fork server imports numpy and h5py now, not in the first upload's time
        await asyncio.to_thread(sandbox.warm)
    except Exception:
        log.warning("upload parser fork server did not start; the first upload will start it", exc_info=True)
    try:  # open the event loop's Redis connections and load the submit route's scripts now, not in
        # the first requests' time
        ar = app.state.async_redis.get()
        await _open_redis_connections(ar, REDIS_CONNECTIONS_AT_START)
        await asyncio.gather(jobs.load_scripts_async(ar), recovery.load_scripts_async(ar))
    except Exception:
        log.warning("Redis not reachable at API start; requests will answer 503 until it is")
    # the sender's thread connects to the broker and loads what Celery loads on a first send
    await asyncio.to_thread(app.state.job_desk.sender.start().wait, 10.0)
    # Everything imported and built so far lives as long as the process: move it out of the cyclic
    # garbage collector's sight (gc.freeze), so a full collection walks only what requests allocate
    # instead of the whole import graph mid-request (docs/perf.md).
    gc.collect()
    gc.freeze()
    yield
    await asyncio.to_thread(app.state.job_desk.close)  # the messages being sent go out first
    await app.state.async_redis.aclose()  # the server loop's client; the sync one needs no closing


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the app; tests pass their own ApiSettings (default: read DNNQ_* once)."""
    settings = settings or get_api_settings()
    app = FastAPI(
        title="dnnq",
        version=API_VERSION,
        description="Train L-layer neural networks over HTTP: upload a dataset, submit a job, "
        "watch it train, download the weights.",
        openapi_url="/openapi.json",
        docs_url=None,  # /docs and /redoc come from service/docs.py: offline, no CDN
        redoc_url=None,
        # operationIds are the routes' names (submit_job, get_job, ...), not FastAPI's path-derived ones
        generate_unique_id_function=operation_id,
        # One schema per model, used for bodies and answers alike (JobSpec, not JobSpec-Input/-Output)
        separate_input_output_schemas=False,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.api_keys = load_api_keys(settings)
    app.state.redis = make_redis(settings)
    app.state.async_redis = AsyncRedisByLoop(settings)
    app.state.store = _make_store(settings)
    app.state.stream_slots = StreamSlots(settings.max_streams_per_tenant)  # open event streams per tenant
    app.state.parse_slots = threading.BoundedSemaphore(settings.max_concurrent_parses)  # routes/datasets.py
    app.state.job_desk = JobDesk(settings, app.state.redis, app.state.async_redis)  # submits and status reads
    _preload()
    app.state.registry = CollectorRegistry()

    install_error_handlers(app)

    from dnnq.service.routes import datasets, health, jobs, metrics, predict

    app.include_router(health.router)
    app.include_router(docs.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    app.include_router(predict.router)
    app.include_router(importlib.import_module("dnnq.service.routes.retention").router)  # issue 15: DELETE
    app.include_router(importlib.import_module("dnnq.service.routes.sweeps").router)  # issue 17
    app.include_router(metrics.router)
    if importlib.util.find_spec("dnnq.service.routes.dashboard") is not None:
        dashboard = importlib.import_module("dnnq.service.routes.dashboard")
        app.include_router(dashboard.router)

    histogram = metrics.install(app)
    # Order: the outermost middleware is added last. Metrics see every response, 413s included.
    if settings.fast_lane:
        from dnnq.service.fastlane import FastLane

        app.add_middleware(FastLane, fastapi_app=app)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    # Outside the body limit: a caller with no key learns nothing about the limits, and its 401 comes
    # before a single byte of the body is counted or read. Inside CORS, so the browser sees the 401.
    app.add_middleware(AuthGateMiddleware, fastapi_app=app)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=list(LIMIT_HEADERS),  # a browser client reads predict's limits too
        )
    # With API keys off: no rebound Host names, no cross-site writes (service/guards.py)
    app.add_middleware(KeylessGuardMiddleware, fastapi_app=app, settings=settings)
    app.add_middleware(RequestMetricsMiddleware, histogram=histogram)
    # Outermost of ours: every answer (Starlette's ServerErrorMiddleware sits outside it; its 500 is a
    # problem_response, which says nosniff itself)
    app.add_middleware(NoSniffMiddleware)

    def openapi() -> dict:
        if app.openapi_schema is None:  # built once, then served from the cache
            app.openapi_schema = readable_forms(document_problems(FastAPI.openapi(app)))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
    return app
