"""/v1/jobs: submit, read, list, cancel, stream events, download weights, predict."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
import time
from typing import Annotated, Literal

import numpy as np
from dnnq.service.deps import AsyncRds, Rds, Settings, Store, Tenant
from dnnq.service.errors import Problem, field_error, problems
from dnnq.service.idempotency import reserve
from dnnq.service.schemas import FiniteJSONResponse, PredictRequest, finite_json, job_view, thin_history
from dnnq.workers import datasets, jobs
from dnnq.workers.celery_wire import train_message
from dnnq.workers.recovery import live_workers_async
from dnnq.workers.spec import JobSpec, PreprocessSpec, SpecError, queue_for, to_train_config
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# Dataset records this process keeps (see _dataset); a few hundred bytes each.
DATASET_CACHE_SIZE = 4096
_clock = time.monotonic  # the worker-capacity cache's clock (tests move it)
WEIGHT_FORMATS = {"npz": "weights.npz", "safetensors": "weights.safetensors", "onnx": "weights.onnx"}


def job_not_found(job_id: str) -> Problem:
    return Problem(404, f"No job with id '{job_id}'.")


def _job_or_404(r, job_id: str, tenant: str) -> dict:
    job = jobs.get_job(r, job_id, tenant)
    if job is None:
        raise job_not_found(job_id)
    return job


async def _read_once(state, key: tuple, read):
    """Await ``read()``, one call per key at a time in this process: requests that miss a cache together
    share one Redis read instead of each making its own (a fresh API's first burst: every one of ~10
    concurrent submits per process read the dataset record and every worker's hash, ~1.5 ms each).
    Shielded, so a waiter whose client goes away does not cancel the read the others wait on."""
    in_flight: dict = state.reads_in_flight
    task = in_flight.get(key)
    if task is None or task.get_loop() is not asyncio.get_running_loop():  # (a test client's loop per request)
        task = in_flight[key] = asyncio.ensure_future(read())

        def done(finished: asyncio.Future) -> None:
            if in_flight.get(key) is finished:
                del in_flight[key]
            if not finished.cancelled():
                finished.exception()  # retrieved here too, for when every waiter has gone

        task.add_done_callback(done)
    return await asyncio.shield(task)


async def _dataset(state, ar, dataset_id: str, tenant: str) -> dict | None:
    """The dataset's record, from this process's cache once read: a record never changes after it is
    written (its id is the hash of its tenant and content, and nothing deletes one), so only the tenant
    check is repeated. Absent ids are not cached: the dataset may be uploaded a moment later."""
    cache: dict = state.dataset_records
    meta = cache.get(dataset_id)
    if meta is None:
        meta = await _read_once(state, ("dataset", dataset_id), lambda: datasets.get_dataset_async(ar, dataset_id))
        if meta is None:
            return None
        if len(cache) >= DATASET_CACHE_SIZE:
            cache.pop(next(iter(cache)))  # the oldest entry
        cache[dataset_id] = meta
    return meta if meta.get("tenant") == tenant else None


async def _queue_workers(state, ar, settings, queue: str) -> tuple[bool, tuple[int, str] | None]:
    """(whether a live worker serves `queue`, the memory one job may use there): the largest such
    worker's GPU memory for the gpu queue, its host memory otherwise; None when none says.

    Read from Redis at most once per DNNQ_WORKER_CAPACITY_CACHE_SECONDS per process: in a burst of
    submits that round trip and the parsing of every worker's hash were ~8% of the API's CPU, and
    workers come and go on a scale of seconds, not milliseconds. "No worker" is never taken from the
    cache: it refuses the submit, and a worker that started a moment ago must count."""
    cache: dict = state.worker_capacity
    now = _clock()
    cached = cache.get(queue)
    if cached is not None and cached[1] and now - cached[0] < settings.worker_capacity_cache_seconds:
        return cached[1], cached[2]
    field = "gpu_memory_total" if queue == "gpu" else "memory_bytes"

    async def read() -> tuple[bool, tuple[int, str] | None]:
        serving = [w for w in await live_workers_async(ar) if queue in (w.get("queues") or "").split(",")]
        sizes = [int(w[field]) for w in serving if (w.get(field) or "").isdigit()]
        capacity = (max(sizes), f"the largest live '{queue}' worker's memory") if sizes else None
        cache[queue] = (now, bool(serving), capacity)
        return bool(serving), capacity

    return await _read_once(state, ("worker capacity", queue), read)


def _no_worker(queue: str) -> Problem:
    if queue == "gpu":
        return field_error(
            "device",
            "no live worker serves the 'gpu' queue, so this job would wait with nothing to run it. "
            "Start one with `dnnq worker --queues gpu --gpu 0` (or `dnnq up --queues default,gpu`), use device "
            "'auto' to train on a CPU worker, or send \"wait_for_worker\": true to queue the job until a GPU "
            "worker starts.",
        )
    return field_error(
        "wait_for_worker",
        f"no live worker serves the '{queue}' queue, so this job would wait with nothing to "
        f'run it. Start one with `dnnq worker --queues {queue}` (or `dnnq up`), or send "wait_for_worker": '
        "true to queue the job until one starts.",
    )


async def _check_limits(state, ar, settings, spec: JobSpec, cfg, meta: dict) -> None:
    """Epochs, parameters, a live worker for the job's queue, memory; the per-tenant job limit is
    checked by create_job itself."""
    if spec.training.epochs > settings.max_epochs:
        raise field_error(
            "training.epochs",
            f"{spec.training.epochs} epochs is over the limit of "
            f"{settings.max_epochs} (DNNQ_MAX_EPOCHS); train fewer epochs.",
        )
    n_params = cfg.parameter_count()
    if n_params > settings.max_parameters:
        raise field_error(
            "model.hidden_layers",
            f"this network has {n_params} parameters; the limit is "
            f"{settings.max_parameters} (DNNQ_MAX_PARAMETERS). Use fewer or smaller hidden layers.",
        )
    capacity = None
    if not (spec.wait_for_worker and settings.worker_memory_bytes):  # else nothing below needs the workers
        queue = queue_for(spec)
        served, capacity = await _queue_workers(state, ar, settings, queue)
        if not served and not spec.wait_for_worker:
            raise _no_worker(queue)
    if settings.worker_memory_bytes:
        capacity = settings.worker_memory_bytes, "DNNQ_WORKER_MEMORY_BYTES"
    if capacity is not None:
        need = cfg.estimate_memory_bytes(int(meta["n_examples"]))
        if need > capacity[0]:
            raise field_error(
                "training.batch_size",
                f"training needs about {need} bytes, more than {capacity[0]} ({capacity[1]}). "
                "Set a smaller training.batch_size, use float32, or shrink the network.",
            )


def _too_many(settings, active: int) -> Problem:
    return Problem(
        429,
        f"This tenant already has {active} queued or running jobs, the limit "
        f"(DNNQ_MAX_QUEUED_JOBS_PER_TENANT = {settings.max_queued_jobs_per_tenant}); "
        "wait for some to finish or cancel them.",
        headers={"Retry-After": "10"},
    )


def _accepted(job: dict, history: list | None) -> FiniteJSONResponse:
    return FiniteJSONResponse(job_view(job, history), status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})


async def accept_job(state, spec: JobSpec, tenant: str, idempotency_key: str | None) -> FiniteJSONResponse:
    """POST /v1/jobs's work once the body is a valid JobSpec: the 202 with the new (or, for a replayed
    Idempotency-Key, the original) job, or a Problem. The route and the submit fast lane
    (service/fastlane.py) both call this. `state` is the app's (clients, settings, caches)."""
    # On the asyncio Redis client: the hot path of a burst of submits makes one or two round trips (the
    # create script; the live workers at most once a second) without a thread hop. The create script
    # also pushes the job's Celery message (workers/celery_wire.py), so the job and its message appear
    # in one atomic step. The Idempotency-Key path is rarer and stays on the sync client in the thread pool.
    r, ar, settings = state.redis, state.async_redis.get(), state.settings
    body = spec.model_dump(mode="json")
    reservation = None
    if idempotency_key is not None:
        # Idempotency first: a replay returns the original job even if the limits would now refuse a new one.
        body_sha = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        reservation, replay_id = await run_in_threadpool(
            reserve,
            r,
            tenant=tenant,
            route="jobs",
            key=idempotency_key,
            body_sha256=body_sha,
            ttl=settings.idempotency_ttl_seconds,
        )
        if replay_id is not None and (job := await jobs.get_job_async(ar, replay_id, tenant)) is not None:
            return _accepted(job, None)
    queue = queue_for(spec)
    try:
        meta = await _dataset(state, ar, spec.dataset_id, tenant)
        if meta is None:
            raise field_error(
                "dataset_id", f"no dataset with id '{spec.dataset_id}'; upload one with POST /v1/datasets."
            )
        val_meta = None
        if spec.validation_dataset_id is not None:
            val_meta = await _dataset(state, ar, spec.validation_dataset_id, tenant)
            if val_meta is None:
                raise field_error("validation_dataset_id", f"no dataset with id '{spec.validation_dataset_id}'.")
        try:
            cfg = to_train_config(spec, meta, val_meta)
        except SpecError as exc:
            raise field_error(exc.field, exc.message) from None
        await _check_limits(state, ar, settings, spec, cfg, meta)
        try:
            job = await jobs.create_job_async(
                ar,
                tenant=tenant,
                spec=body,
                queue=queue,
                dataset_id=spec.dataset_id,
                validation_dataset_id=spec.validation_dataset_id,
                max_unfinished=settings.max_queued_jobs_per_tenant,
                message_for=train_message,
            )
        except jobs.TooManyUnfinished as exc:
            raise _too_many(settings, exc.unfinished) from None
    except BaseException:  # a refused or failed submit frees its key: the client may fix the body and retry
        if reservation:
            await run_in_threadpool(reservation.release)
        raise
    if reservation:
        await run_in_threadpool(reservation.complete, job["id"])
    return _accepted(job, [])


@router.post("", status_code=202, summary="Submit a training job", responses=problems(429))
async def submit_job(
    spec: JobSpec,
    request: Request,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> FiniteJSONResponse:
    # Most submits never get here: service/fastlane.py answers the valid ones below FastAPI; this route
    # answers the rest (invalid bodies: FastAPI's 422; no key: 401) and documents the endpoint.
    return await accept_job(request.app.state, spec, tenant, idempotency_key)


@router.get("")
def list_jobs(
    r: Rds,
    tenant: Tenant,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"] | None, Query()
    ] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,  # Redis ranges are int64
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict:
    """This tenant's jobs, newest first, without histories."""
    items, total = jobs.list_jobs(r, tenant, status=status, offset=offset, limit=limit)
    # A JSONResponse skips FastAPI's validation and jsonable_encoder pass over the returned dict; the
    # finite one answers null for a NaN or infinity an older version left in a record, not a 500.
    return FiniteJSONResponse(
        {"items": [job_view(j, None) for j in items], "total": total, "offset": offset, "limit": limit}
    )


HistoryChoice = Literal["thin", "full", "none"]


async def read_job_view(ar, job_id: str, tenant: str, history: HistoryChoice, history_full_max: int) -> dict | None:
    """GET /v1/jobs/{id}'s body, None when the caller may not see such a job. The route and the status
    fast lane (service/fastlane.py) both answer with this, so they cannot drift apart."""
    job = await jobs.get_job_async(ar, job_id, tenant)
    if job is None:
        return None
    hist = None
    if history != "none":
        hist = await jobs.get_history_async(ar, job_id)
        if history == "thin":
            hist = thin_history(hist, history_full_max)
    return job_view(job, hist)


@router.get("/{job_id}", responses=problems(404))
async def get_job(
    job_id: str,
    ar: AsyncRds,
    settings: Settings,
    tenant: Tenant,
    history: Annotated[
        HistoryChoice, Query(description="thin (default): whole up to 1,000 epochs, then evenly thinned; full; none")
    ] = "thin",
) -> dict:
    # The status-poll path. Most polls never get here: service/fastlane.py answers the well-formed ones
    # below FastAPI; this route answers the rest (bad query, no key, ...) and documents the endpoint.
    # `async def` on the asyncio Redis client: a plain `def` route runs in the thread pool, a thread hop
    # per request. A JSONResponse skips FastAPI's jsonable_encoder pass (~80 us a call).
    view = await read_job_view(ar, job_id, tenant, history, settings.history_full_max)
    if view is None:
        raise job_not_found(job_id)
    return FiniteJSONResponse(view)


@router.post("/{job_id}/cancel", status_code=202, responses=problems(404, 409))
def cancel_job(job_id: str, r: Rds, tenant: Tenant) -> FiniteJSONResponse:
    """queued -> cancelled at once; running -> cancelling (stops at the next epoch). 409 if finished."""
    _job_or_404(r, job_id, tenant)
    try:
        jobs.request_cancel(r, job_id)
    except jobs.JobNotFound:
        raise job_not_found(job_id) from None
    except jobs.JobConflict as exc:
        raise Problem(409, str(exc)) from None
    return FiniteJSONResponse(job_view(_job_or_404(r, job_id, tenant), None), status_code=202)


def _sse(event: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {finite_json(data)}\n\n"  # never `Infinity`: not JSON


# A Last-Event-ID we resume after: ASCII digits (str.isdigit also takes '²' and other scripts' digits,
# which int() refuses) and at most 18 of them, within Redis's int64 list indices.
_EVENT_ID = re.compile(r"[0-9]{1,18}")


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **problems(404)},
)
async def job_events(
    job_id: str,
    request: Request,
    ar: AsyncRds,
    settings: Settings,
    tenant: Tenant,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: `epoch` (id = epoch) per completed epoch, `status` on changes, `end` last.
    Each open stream polls Redis every sse_poll_seconds, on the asyncio client (no thread per poll)."""
    if await jobs.get_job_async(ar, job_id, tenant) is None:
        raise job_not_found(job_id)
    # anything else is ignored, as an SSE client expects: the stream starts from the beginning
    next_index = int(last_event_id) if last_event_id and _EVENT_ID.fullmatch(last_event_id) else 0

    async def stream():
        nonlocal next_index
        status, last_sent = None, time.monotonic()
        yield ": stream open\n\n"
        while True:
            job = await jobs.get_job_async(ar, job_id, tenant)
            if job is None:
                return
            for entry in await jobs.get_history_async(ar, job_id, next_index, -1):
                next_index += 1
                epoch = entry.get("epoch")
                yield _sse("epoch", entry, epoch if isinstance(epoch, int) else next_index)
                last_sent = time.monotonic()
            if job["status"] != status:
                status = job["status"]
                yield _sse("status", {"status": status, "progress": job.get("progress")})
                last_sent = time.monotonic()
            if status in {s.value for s in jobs.TERMINAL}:
                yield _sse("end", job_view(job, None))
                return
            if time.monotonic() - last_sent >= settings.sse_keepalive_seconds:
                yield ": keepalive\n\n"
                last_sent = time.monotonic()
            if await request.is_disconnected():
                return
            await asyncio.sleep(settings.sse_poll_seconds)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _succeeded_or_409(job: dict) -> None:
    if job["status"] != "succeeded":
        raise Problem(409, f"Job '{job['id']}' is {job['status']}; its model exists once it has succeeded.")


@router.get(
    "/{job_id}/weights",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        304: {"description": "Not Modified (If-None-Match)"},
        **problems(404, 409),
    },
)
def download_weights(
    job_id: str,
    r: Rds,
    store: Store,
    tenant: Tenant,
    format: Annotated[str, Query(description="npz | safetensors | onnx")] = "npz",
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    if format not in WEIGHT_FORMATS:
        raise field_error("format", f"unknown format {format!r}; use one of {', '.join(WEIGHT_FORMATS)}.")
    job = _job_or_404(r, job_id, tenant)
    _succeeded_or_409(job)
    sha = (job.get("artifacts") or {}).get(format)
    key = f"jobs/{job_id}/{WEIGHT_FORMATS[format]}"
    if not sha or not store.exists(key):
        raise Problem(404, f"Job '{job_id}' has no {format} weights (this worker did not export them).")
    etag = f'"{sha}"'
    headers = {
        "ETag": etag,
        "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(sha)).decode(),
        "X-Checksum-SHA256": sha,
        "Cache-Control": "private, max-age=0, must-revalidate",
    }
    if if_none_match and (
        if_none_match.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    ):
        return Response(status_code=304, headers=headers)
    filename = f"dnnq-{job_id}.{format}"
    path = store.local_path(key)
    if path is not None:
        return FileResponse(path, media_type="application/octet-stream", filename=filename, headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(store.get(key), media_type="application/octet-stream", headers=headers)


@router.get("/{job_id}/model", responses=problems(404, 409))
def get_model(job_id: str, r: Rds, store: Store, tenant: Tenant) -> FiniteJSONResponse:
    """The trained model's description (layer sizes, activations, preprocessing, classes, metrics)."""
    job = _job_or_404(r, job_id, tenant)
    _succeeded_or_409(job)
    try:
        return FiniteJSONResponse(json.loads(store.get(f"jobs/{job_id}/model.json")))
    except KeyError:
        raise Problem(404, f"Job '{job_id}' has no model.json in the artifact store.") from None


@router.post("/{job_id}/predict", responses=problems(404, 409))
def predict(job_id: str, body: PredictRequest, r: Rds, store: Store, settings: Settings, tenant: Tenant) -> dict:
    """Predict with the trained weights on the CPU; inputs are raw rows (preprocess.scale is applied here)."""
    from dnnq.models import labels_from_output
    from dnnq.models import predict as model_predict

    job = _job_or_404(r, job_id, tenant)
    _succeeded_or_409(job)
    rows = len(body.inputs)
    if rows > settings.max_predict_examples:
        raise field_error(
            "inputs",
            f"{rows} examples is over the limit of {settings.max_predict_examples} "
            "(DNNQ_MAX_PREDICT_EXAMPLES); send them in smaller requests.",
        )
    meta = datasets.get_dataset(r, job["dataset_id"]) or {}
    n_x = int(meta.get("n_features") or 0)
    widths = {len(row) for row in body.inputs}
    if widths != {n_x}:
        raise field_error(
            "inputs", f"each example needs {n_x} features (the training set's); got rows of {sorted(widths)}."
        )
    spec = job["spec"]
    try:
        preprocess = PreprocessSpec.model_validate(spec.get("preprocess") or {})
    except ValidationError:  # a record written before the spec's bounds: its model cannot be trusted
        raise Problem(
            409, f"Job '{job_id}' was trained with a preprocess.scale this version refuses; train it again."
        ) from None
    try:
        raw = store.get(f"jobs/{job_id}/weights.npz")
    except KeyError:
        raise Problem(404, f"Job '{job_id}' has no npz weights.") from None
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        params = {k: npz[k] for k in npz.files}  # the dtype the job trained in
    n_y = int(params[f"b{len(params) // 2}"].shape[0])
    if rows * n_y > settings.max_predict_values:
        fit = settings.max_predict_values // n_y
        hint = (
            f"send at most {fit} rows per request"
            if fit
            else "this model's outputs alone are over it: an operator may raise DNNQ_MAX_PREDICT_VALUES"
        )
        raise field_error(
            "inputs",
            f"{rows} rows x {n_y} outputs is {rows * n_y} values, over the response limit "
            f"of {settings.max_predict_values} (DNNQ_MAX_PREDICT_VALUES); {hint}.",
        )
    X = np.asarray(body.inputs, dtype=np.float64)
    _finite_rows_or_422(
        X,
        "NaN or an infinite value (JSON's NaN, Infinity, or a number past float64's range "
        "such as 1e999); send finite numbers.",
    )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, by value
        X = preprocess.apply(X)
        _finite_rows_or_422(
            X,
            f"the values overflow once multiplied by this job's preprocess.scale "
            f"({preprocess.scale}); send raw values on the training data's scale.",
        )
        hidden, output = spec["model"]["hidden_activation"], spec["model"]["output"]
        AL = np.asarray(model_predict(params, X.T, hidden_activation=hidden, output=output, proba=True))  # one pass
    _finite_rows_or_422(
        AL.T,
        "the model's outputs are not finite numbers (the network's values overflow): "
        "these inputs are far outside the training data's range. Send raw values on the training "
        "data's scale (preprocess.scale is applied here), or retrain with dtype 'float64' or "
        "scaled targets.",
    )
    labels = labels_from_output(AL, output)
    classes = meta.get("classes")
    out: dict = {"predictions": np.asarray(labels).tolist(), "probabilities": None}
    if output != "linear":
        out["probabilities"] = (AL[0] if output == "sigmoid" else AL.T).tolist()
        if classes and any(isinstance(c, str) for c in classes):
            out["labels"] = [classes[int(k)] for k in out["predictions"]]
    else:
        out["predictions"] = np.asarray(labels).T.tolist()
    return out


def _finite_rows_or_422(rows: np.ndarray, what: str) -> None:
    """A 422 on `inputs` naming the first rows (examples first) where any value is NaN or infinite."""
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        where = np.flatnonzero(bad)
        listed = ", ".join(str(i) for i in where[:5]) + (f" and {where.size - 5} more" if where.size > 5 else "")
        raise field_error("inputs", f"{'row' if where.size == 1 else 'rows'} {listed}: {what}")
