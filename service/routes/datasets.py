"""/v1/datasets: upload (.npz/.csv/.h5), synthetic generators, read and list.

An upload is streamed to a staging file and parsed in a sandboxed child (service/sandbox.py) that
writes the stored file; this process only moves files and writes the record. The preview reads
only the rows it shows (workers.datasets.read_preview).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from dnnq.service.deps import Rds, Settings, Store, Tenant
from dnnq.service.errors import Problem, problems
from dnnq.service.idempotency import PENDING_TTL_SECONDS, reserve
from dnnq.service.sandbox import parse_in_sandbox
from dnnq.service.schemas import DatasetDetail, DatasetList, DatasetView, SyntheticRequest, dataset_view
from dnnq.service.settings import ApiSettings
from dnnq.service.synthetic import PARAMETERS, class_count, generate
from dnnq.service.uploads import UploadError, UploadLimits
from dnnq.workers import datasets

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
PREVIEW_ROWS, PREVIEW_FEATURES = 5, 20
_COPY_CHUNK = 1024 * 1024
_SAME: dict[int | str, dict[str, Any]] = {
    200: {"description": "The same content was stored before: the existing dataset.", "model": DatasetView}
}


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _limits(settings: ApiSettings) -> UploadLimits:
    return UploadLimits(
        settings.max_examples,
        settings.max_features,
        settings.decompressed_limit,
        max_classes=settings.max_classes,
        max_expansion_ratio=settings.max_expansion_ratio,
    )


def _save(
    r: redis.Redis,
    settings: ApiSettings,
    *,
    tenant: str,
    idem_key: str | None,
    body_sha: str,
    store_it: Callable[[], dict[str, Any]],
) -> JSONResponse:
    """Run `store_it()` (-> record) under the Idempotency-Key; 201 for a new dataset, 200 when identical
    content already exists. An Idempotency-Key replay answers 201 with the original id, without
    calling `store_it`. UploadError and DatasetError are 4xx problems."""
    reservation, replay_id = reserve(
        r,
        tenant=tenant,
        route="datasets",
        key=idem_key,
        body_sha256=body_sha,
        ttl=settings.idempotency_ttl_seconds,
        pending_ttl=settings.parse_wall_seconds + PENDING_TTL_SECONDS,  # the parse may take its whole limit
    )
    if replay_id is not None:
        rec = datasets.get_dataset(r, replay_id, tenant)
        if rec is not None:
            return _created(rec, 201)
    started = _now_iso()
    try:
        rec = store_it()
    except BaseException as exc:
        if reservation:
            reservation.release()
        if isinstance(exc, UploadError):
            raise Problem(exc.status, exc.detail) from None
        if isinstance(exc, datasets.DatasetError):
            raise Problem(422, str(exc)) from None
        if isinstance(exc, datasets.QuotaExceeded):
            raise Problem(413, str(exc)) from None
        raise
    if reservation:
        reservation.complete(rec["id"])
    return _created(rec, 201 if rec["created_at"] >= started else 200)


# How long a parse or a generation waits for a slot (DNNQ_MAX_CONCURRENT_PARSES) before its 503.
SLOT_WAIT_SECONDS = 10.0


@contextlib.contextmanager
def _parse_slot(request: Request, settings: ApiSettings) -> Iterator[None]:
    """One of this process's slots for the heavy part of a dataset (a parser child, or generating one):
    each may take its memory limit, so how many run at once is bounded, not left to the request count."""
    slots: threading.BoundedSemaphore = request.app.state.parse_slots
    if not slots.acquire(timeout=SLOT_WAIT_SECONDS):
        raise Problem(
            503,
            f"This API process is already parsing or generating {settings.max_concurrent_parses} datasets, its "
            "most at once (DNNQ_MAX_CONCURRENT_PARSES); send it again in a few seconds.",
            headers={"Retry-After": "5"},
        )
    try:
        yield
    finally:
        slots.release()


def _stream_to(file: UploadFile, path: Path) -> str:
    """Copy the upload to `path` in chunks; the sha256 of its bytes."""
    h = hashlib.sha256()
    with open(path, "xb") as out:
        while chunk := file.file.read(_COPY_CHUNK):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _created(rec: dict[str, Any], status: int) -> JSONResponse:
    return JSONResponse(dataset_view(rec), status_code=status, headers={"Location": f"/v1/datasets/{rec['id']}"})


@router.post(
    "", status_code=201, summary="Upload a dataset (.npz, .csv or .h5)", response_model=DatasetView, responses=_SAME
)
def upload_dataset(
    request: Request,
    r: Rds,
    store: Store,
    settings: Settings,
    tenant: Tenant,
    file: Annotated[UploadFile, File(description=".npz (X, Y), .csv with header, or .h5")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    target: Annotated[str | None, Form(description="CSV: label column (default: last)")] = None,
    x_key: Annotated[str, Form(max_length=200)] = "X",
    y_key: Annotated[str, Form(max_length=200)] = "Y",
    layout: Annotated[str, Form(description="examples_first (m, ...) or features_first (n_x, m)")] = "examples_first",
    header: Annotated[
        Literal["auto", "yes", "no"],
        Form(description="CSV: does line 1 name the columns? auto: data when it is all numbers"),
    ] = "auto",
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Examples are rows. Returns 201 for a new dataset; an identical upload returns 200 with the same id."""
    upload_path, stored_path = store.new_staging_path(".upload"), store.new_staging_path(".npz")
    try:
        form = json.dumps([file.filename, name, target, x_key, y_key, layout, header])
        body_sha = hashlib.sha256(bytes.fromhex(_stream_to(file, upload_path)) + form.encode()).hexdigest()

        def store_it() -> dict[str, Any]:
            with _parse_slot(request, settings):
                info = parse_in_sandbox(
                    file.filename or "",
                    upload_path,
                    stored_path,
                    _limits(settings),
                    target=target,
                    x_key=x_key,
                    y_key=y_key,
                    layout=layout,
                    header=header,
                    memory_bytes=settings.parse_memory_limit,
                    cpu_seconds=settings.parse_cpu_seconds,
                    wall_seconds=settings.parse_wall_seconds,
                )
            return datasets.save_dataset_file(
                r,
                store,
                tenant=tenant,
                name=name or file.filename or "upload",
                source=f"upload:{file.filename}",
                path=stored_path,
                info=info,
                quota_bytes=settings.max_dataset_bytes_per_tenant,
            )

        return _save(r, settings, tenant=tenant, idem_key=idempotency_key, body_sha=body_sha, store_it=store_it)
    finally:
        upload_path.unlink(missing_ok=True)
        stored_path.unlink(missing_ok=True)


@router.post(
    "/synthetic",
    status_code=201,
    name="create_synthetic_dataset",
    summary="Generate moons, circles, spiral or blobs",
    response_model=DatasetView,
    responses=_SAME,
)
def synthetic_dataset(
    request: Request,
    body: SyntheticRequest,
    r: Rds,
    store: Store,
    settings: Settings,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    _check_synthetic_size(body, settings)
    k = class_count(body.name, body.n_classes)
    label = f"{body.name}(" + ", ".join(f"{a}={getattr(body, a)}" for a in PARAMETERS[body.name]) + ")"
    body_sha = hashlib.sha256(body.model_dump_json().encode()).hexdigest()

    def store_it() -> dict[str, Any]:
        with _parse_slot(request, settings):  # the arrays exist only inside the slot
            X, y = generate(body.name, body.n_samples, body.noise, body.seed, n_classes=k, n_features=body.n_features)
            return datasets.save_dataset(
                r,
                store,
                tenant=tenant,
                name=label,
                source=f"synthetic:{body.name}",
                X=X,
                Y=y,
                classes=list(range(k)),
                label_kind="binary" if k == 2 else "integer",
                quota_bytes=settings.max_dataset_bytes_per_tenant,
            )

    return _save(r, settings, tenant=tenant, idem_key=idempotency_key, body_sha=body_sha, store_it=store_it)


def _check_synthetic_size(body: SyntheticRequest, settings: ApiSettings) -> None:
    """A 422 for a request over the limits: examples, features, and bytes (no more than an upload)."""
    limit = min(settings.max_synthetic_samples, settings.max_examples)
    if body.n_samples > limit:
        raise Problem(
            422,
            f"n_samples: {body.n_samples} is over the limit of {limit}.",
            errors=[{"field": "n_samples", "message": f"must be <= {limit}"}],
        )
    if body.n_features > settings.max_features:
        raise Problem(
            422,
            f"n_features: {body.n_features} is over the limit of {settings.max_features}.",
            errors=[{"field": "n_features", "message": f"must be <= {settings.max_features}"}],
        )
    width = body.n_features if body.name == "blobs" else 2
    size = body.n_samples * width * 8  # float64 values: no bigger than an upload could be
    if size > settings.max_upload_bytes:
        raise Problem(
            422,
            f"n_samples x n_features = {body.n_samples} x {width} float64 values is {size} bytes, over "
            f"the {settings.max_upload_bytes} an upload may have (DNNQ_MAX_UPLOAD_BYTES); generate fewer "
            "samples or features.",
            errors=[
                {"field": "n_samples", "message": f"n_samples x n_features x 8 must be <= {settings.max_upload_bytes}"}
            ],
        )


# exclude_unset: preview_error is sent only when there is one, as the view leaves it out
@router.get("/{dataset_id}", response_model=DatasetDetail, response_model_exclude_unset=True, responses=problems(404))
def get_dataset(
    dataset_id: str,
    r: Rds,
    store: Store,
    tenant: Tenant,
    preview: Annotated[Literal["short", "full"], Query(description="full: whole rows (to draw images)")] = "short",
) -> dict:
    """The dataset record plus a preview: its first 5 examples, truncated to 20 features unless
    `preview=full` (the dashboard draws image-like rows from it)."""
    rec = datasets.get_dataset(r, dataset_id, tenant)
    if rec is None:
        raise Problem(404, f"No dataset with id '{dataset_id}'.")
    view = dataset_view(rec)
    try:
        X, Y = datasets.read_preview(store, dataset_id, PREVIEW_ROWS, None if preview == "full" else PREVIEW_FEATURES)
    except (LookupError, datasets.DatasetError) as exc:
        view["preview"] = None
        view["preview_error"] = str(exc)
        return view
    view["preview"] = {"X": X.tolist(), "Y": Y.tolist(), "features_truncated": rec["n_features"] > X.shape[1]}
    return view


@router.get("", response_model=DatasetList)
def list_datasets(
    r: Rds,
    tenant: Tenant,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,  # Redis ranges are int64
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict:
    """This tenant's datasets, newest first."""
    items, total = datasets.list_datasets(r, tenant, offset, limit)
    return {"items": [dataset_view(d) for d in items], "total": total, "offset": offset, "limit": limit}
