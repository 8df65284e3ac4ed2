"""/healthz (the process is up) and /readyz (Redis answers and a worker is alive)."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from dnnq.service.deps import Rds, Store
from dnnq.service.schemas import Health, Readiness
from dnnq.workers.artifact_store import StoreConfigError
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
def readyz(r: Rds, store: Store) -> JSONResponse:
    """200 when Redis answers PING and at least one worker heartbeat exists, else 503 naming what is missing."""
    missing = []
    workers = 0
    try:
        r.ping()
        workers = len(live_workers(r))
        if workers == 0:
            missing.append("worker: no dnnq:worker:* heartbeat; start one with `dnnq worker`")
    except (redis.ConnectionError, redis.TimeoutError):
        missing.append("redis: PING failed; is Redis running at DNNQ_REDIS_URL?")
    store_state: dict[str, object] = {"location": store.location, "ok": True}
    try:
        store.check()
    except StoreConfigError as exc:
        store_state["ok"] = False
        missing.append(f"store: {exc}")
    body = {"status": "ready" if not missing else "not ready", "workers": workers, "missing": missing}
    return JSONResponse({**body, "store": store_state}, status_code=200 if not missing else 503)
