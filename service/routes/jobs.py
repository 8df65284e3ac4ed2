"""/v1/jobs: submit, read, list, cancel, stream events, download weights (predict: routes/predict.py)."""

from __future__ import annotations

import base64
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from dnnq.service import sse
from dnnq.service.deps import AsyncRds, Rds, Settings, Store, Tenant
from dnnq.service.errors import Problem, field_error, problems
from dnnq.service.jobdesk import HistoryChoice, JobDesk, job_not_found
from dnnq.service.schemas import (
    CancelAccepted,
    FiniteJSONResponse,
    JobAccepted,
    JobList,
    JobStatusEvent,
    JobView,
    ModelDescription,
    job_view,
    sse_response,
)
from dnnq.workers import jobs
from dnnq.workers.spec import JobSpec
from dnnq.workers.status import Status

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

WEIGHT_FORMATS = {"npz": "weights.npz", "safetensors": "weights.safetensors", "onnx": "weights.onnx"}
# The non-JSON answers, documented as what they are (and only that): a file, an event stream.
OCTET_STREAM, EVENT_STREAM = "application/octet-stream", "text/event-stream"
BINARY = {"type": "string", "format": "binary"}


async def get_job_desk(request: Request) -> JobDesk:
    return request.app.state.job_desk


Desk = Annotated[JobDesk, Depends(get_job_desk)]


def _job_or_404(r: Any, job_id: str, tenant: str) -> dict:
    job = jobs.get_job(r, job_id, tenant)
    if job is None:
        raise job_not_found(job_id)
    return job


@router.post(
    "", status_code=202, summary="Submit a training job", response_model=JobAccepted, responses=problems(413, 429)
)
async def submit_job(
    spec: JobSpec,
    desk: Desk,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> FiniteJSONResponse:
    # Most submits never get here: service/fastlane.py answers the valid ones below FastAPI; this route
    # answers the rest (invalid bodies: FastAPI's 422; no key: 401) and documents the endpoint.
    return await desk.submit(spec, tenant, idempotency_key)


@router.get("", response_model=JobList)
def list_jobs(
    r: Rds,
    tenant: Tenant,
    status: Annotated[Status | None, Query()] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,  # Redis ranges are int64
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> FiniteJSONResponse:
    """This tenant's jobs, newest first, without histories."""
    items, total = jobs.list_jobs(r, tenant, status=status, offset=offset, limit=limit)
    # A JSONResponse skips FastAPI's validation and jsonable_encoder pass over the returned dict; the
    # finite one answers null for a NaN or infinity an older version left in a record, not a 500.
    return FiniteJSONResponse(
        {"items": [job_view(j, None) for j in items], "total": total, "offset": offset, "limit": limit}
    )


@router.get("/{job_id}", response_model=JobView, responses=problems(404))
async def get_job(
    job_id: str,
    desk: Desk,
    tenant: Tenant,
    history: Annotated[
        HistoryChoice, Query(description="thin (default): whole up to 1,000 epochs, then evenly thinned; full; none")
    ] = "thin",
) -> FiniteJSONResponse:
    # The status-poll path. Most polls never get here: service/fastlane.py answers the well-formed ones
    # below FastAPI; this route answers the rest (bad query, no key, ...) and documents the endpoint.
    # `async def` on the asyncio Redis client: a plain `def` route runs in the thread pool, a thread hop
    # per request. A JSONResponse skips FastAPI's jsonable_encoder pass (docs/perf.md).
    view = await desk.view(job_id, tenant, history)
    if view is None:
        raise job_not_found(job_id)
    return FiniteJSONResponse(view)


@router.post("/{job_id}/cancel", status_code=202, response_model=CancelAccepted, responses=problems(404, 409))
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


# A Last-Event-ID we resume after: ASCII digits (str.isdigit also takes '²' and other scripts' digits,
# which int() refuses) and at most 18 of them, within Redis's int64 list indices.
_EVENT_ID = re.compile(r"[0-9]{1,18}")


@router.get(
    "/{job_id}/events",
    name="stream_job_events",
    response_class=StreamingResponse,
    responses={
        200: sse_response({"epoch": "HistoryEntry", "status": JobStatusEvent, "end": "JobView"}),
        **problems(404, 429),  # 429: the key's event streams are all open (DNNQ_MAX_STREAMS_PER_TENANT)
    },
)
async def job_events(
    job_id: str,
    request: Request,
    ar: AsyncRds,
    settings: Settings,
    store: Store,
    tenant: Tenant,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: `epoch` (id = epoch) per completed epoch, `status` on changes, `end` last.
    Each open stream polls Redis every sse_poll_seconds, on the asyncio client (no thread per poll)."""
    if await jobs.get_job_async(ar, job_id, tenant) is None:
        raise job_not_found(job_id)
    # anything else is ignored, as an SSE client expects: the stream starts from the beginning
    next_index = int(last_event_id) if last_event_id and _EVENT_ID.fullmatch(last_event_id) else 0

    status: str | None = None

    async def one_round() -> tuple[list[str], bool]:
        nonlocal next_index, status
        job = await jobs.get_job_async(ar, job_id, tenant)
        if job is None:
            return [], True
        out = []
        for entry in await jobs.get_history_async(ar, job_id, next_index, -1, store=store, job=job):
            next_index += 1
            epoch = entry.get("epoch")
            out.append(sse.event("epoch", entry, epoch if isinstance(epoch, int) else next_index))
        if job["status"] != status:
            status = job["status"]
            out.append(sse.event("status", {"status": status, "progress": job.get("progress")}))
        if status in {s.value for s in jobs.TERMINAL}:
            return [*out, sse.event("end", job_view(job, None))], True
        return out, False

    return sse.polled_stream(request, settings, one_round, tenant)


def _succeeded_or_409(job: dict) -> None:
    if job["status"] != "succeeded":
        raise Problem(409, f"Job '{job['id']}' is {job['status']}; its model exists once it has succeeded.")


@router.get(
    "/{job_id}/weights",
    name="get_weights",
    response_class=Response,  # media type None: FastAPI adds no application/json beside the binary below
    responses={
        200: {"description": "The weights file", "content": {OCTET_STREAM: {"schema": BINARY}}},
        304: {"description": "Not Modified (If-None-Match)"},
        **problems(404, 409),
    },
)
def download_weights(
    job_id: str,
    r: Rds,
    store: Store,
    settings: Settings,
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
    url = store.presigned_url(key, settings.artifacts_redirect_seconds) if settings.artifacts_redirect_seconds else None
    if url:  # DNNQ_ARTIFACTS_REDIRECT_SECONDS: the client fetches from the object store itself
        return Response(status_code=307, headers={**headers, "Location": url})
    try:
        size, chunks = store.stream(key)  # from the object store through this process, never whole in memory
    except KeyError:
        raise Problem(404, f"Job '{job_id}' has no {format} weights in the artifact store.") from None
    headers["Content-Length"] = str(size)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


@router.get("/{job_id}/model", response_model=ModelDescription, responses=problems(404, 409))
def get_model(job_id: str, r: Rds, store: Store, tenant: Tenant) -> FiniteJSONResponse:
    """The trained model's description (layer sizes, activations, preprocessing, classes, metrics)."""
    job = _job_or_404(r, job_id, tenant)
    _succeeded_or_409(job)
    try:
        return FiniteJSONResponse(json.loads(store.get(f"jobs/{job_id}/model.json")))
    except KeyError:
        raise Problem(404, f"Job '{job_id}' has no model.json in the artifact store.") from None
