"""/healthz (the process is up) and /readyz (Redis answers and a worker is alive)."""

from __future__ import annotations

import time

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from dnnq.service.deps import Rds, Store, tenant_for
from dnnq.service.schemas import Health, Readiness
from dnnq.workers.artifact_store import ArtifactStore, StoreConfigError
from dnnq.workers.recovery import live_workers

router = APIRouter(tags=["health"])


@router.get("/healthz", name="get_health", response_model=Health)
def healthz() -> dict:
    """Always 200 while the process serves requests; needs no API key."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    name="get_readiness",
    response_model=Readiness,
    responses={503: {"description": "Not ready: `missing` says what is absent", "model": Readiness}},
)
def readyz(r: Rds, store: Store, request: Request) -> JSONResponse:
    """200 when Redis answers PING and at least one worker heartbeat exists, else 503 naming what is missing.
    With API keys on, a caller without a key (a load balancer's probe) gets the verdict without where the
    artifact store is or what it answered; an API key or the operator's metrics key sees both."""
    missing = []
    workers = 0
    try:
        r.ping()
        workers = len(live_workers(r))
        if workers == 0:
            missing.append("worker: no dnnq:worker:* heartbeat; start one with `dnnq worker`")
    except (redis.ConnectionError, redis.TimeoutError):
        missing.append("redis: PING failed; is Redis running at DNNQ_REDIS_URL?")
    problem = _store_problem(store)
    if _may_see_details(request):
        store_state: dict[str, object] = {"location": store.location, "ok": problem is None}
        if problem is not None:
            missing.append(f"store: {problem}")
    else:
        store_state = {"location": HIDDEN, "ok": problem is None}
        if problem is not None:
            missing.append("store: the artifact store does not answer (an API key sees why)")
    body = {"status": "ready" if not missing else "not ready", "workers": workers, "missing": missing}
    return JSONResponse({**body, "store": store_state}, status_code=200 if not missing else 503)


HIDDEN = "(hidden: send an API key)"
# Anyone may call /readyz: while the store answers, one LIST per this many seconds serves every probe
# (a flood of them is not a flood of requests to the object store). A failure is not kept: the next
# probe checks again, so a store that comes back is seen at once.
STORE_OK_SECONDS = 2.0
_answered_at: dict[int, float] = {}  # id(store) -> when its check last passed


def _store_problem(store: ArtifactStore) -> str | None:
    """What the store's check found wrong, or None when it answered (within STORE_OK_SECONDS)."""
    now = time.monotonic()
    if now - _answered_at.get(id(store), -STORE_OK_SECONDS) < STORE_OK_SECONDS:
        return None
    try:
        store.check()
    except StoreConfigError as exc:
        _answered_at.pop(id(store), None)
        return str(exc)
    _answered_at[id(store)] = now
    return None


def _may_see_details(request: Request) -> bool:
    keys = request.app.state.api_keys
    if not keys:
        return True
    authorization = request.headers.get("authorization", "")
    metrics_key = request.app.state.settings.metrics_key
    operator = [(metrics_key.encode(), "operator")] if metrics_key else []
    return tenant_for([*keys, *operator], authorization) is not None
