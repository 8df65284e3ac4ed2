"""POST /v1/jobs/{id}/predict: the trained weights applied on the CPU to rows the client sends, as
JSON or as one binary array (.npy, or an .npz holding X); GET /v1/limits: the sizes a client splits by.

A binary body is parsed here without numpy.load: the header is read and checked (numeric dtype, no
pickles, a declared size within the limits and equal to the bytes sent) before any array is made.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from dnnq.service.deps import Rds, Settings, Store, Tenant
from dnnq.service.errors import Problem, field_error, problems
from dnnq.service.formats.common import UploadError, declared_bytes, short
from dnnq.service.formats.npz import _check_directory_size, _check_member, _read_data, _read_header
from dnnq.service.jobdesk import job_not_found
from dnnq.service.schemas import FiniteJSONResponse, PredictRequest
from dnnq.service.settings import ApiSettings
from dnnq.workers import datasets, jobs
from dnnq.workers.spec import PreprocessSpec

__all__ = ["BINARY_PREDICT_TYPES", "LIMIT_HEADERS", "Limits", "PredictResponse", "limit_headers", "router"]

router = APIRouter()

NPY_TYPE = "application/x-npy"
NPZ_TYPES = ("application/x-npz", "application/zip")
# app.py's body limit gives these (on a predict path) max_predict_body_bytes instead of the JSON limit
BINARY_PREDICT_TYPES = frozenset(t.encode() for t in (NPY_TYPE, *NPZ_TYPES))


class PredictResponse(BaseModel):
    """One entry per input row, in order."""

    predictions: list[int] | list[list[float]] = Field(
        description="The class index (sigmoid: 0 or 1; softmax: the argmax), or the outputs (linear)."
    )
    probabilities: list[list[float]] | None = Field(
        description="rows x outputs: sigmoid's P(class 1) in one column, softmax's one per class; null for linear."
    )
    labels: list[str | int | float] | None = Field(
        default=None, description="The predicted class as the training set's label (e.g. 'cat'); null for linear."
    )


class Limits(BaseModel):
    """What one request may carry; clients split their rows by these."""

    max_json_body_bytes: int = Field(description="Largest JSON body (DNNQ_MAX_JSON_BODY_BYTES).")
    max_upload_bytes: int = Field(description="Largest dataset upload (DNNQ_MAX_UPLOAD_BYTES).")
    max_predict_body_bytes: int = Field(description="Largest binary predict body (DNNQ_MAX_PREDICT_BODY_BYTES).")
    max_predict_input_values: int = Field(description="Rows x features in one predict request.")
    max_predict_examples: int = Field(description="Rows in one predict request (DNNQ_MAX_PREDICT_EXAMPLES).")
    max_predict_values: int = Field(description="Rows x outputs in one predict answer (DNNQ_MAX_PREDICT_VALUES).")
    predict_content_types: list[str] = Field(description="The body types predict accepts.")


def _input_values_limit(settings: ApiSettings) -> int:
    return settings.max_predict_body_bytes // 8  # the inputs as float64 take at most the body limit again


def _limits(settings: ApiSettings) -> Limits:
    return Limits(
        max_json_body_bytes=settings.max_json_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        max_predict_body_bytes=settings.max_predict_body_bytes,
        max_predict_input_values=_input_values_limit(settings),
        max_predict_examples=settings.max_predict_examples,
        max_predict_values=settings.max_predict_values,
        predict_content_types=["application/json", NPY_TYPE, *NPZ_TYPES],
    )


# Predict's limits, also sent as headers on every predict answer (errors too) and on GET /v1/limits, so a
# client that got a 413 or a 200 knows how to split without another request: header -> Limits field.
LIMIT_HEADERS = {
    "X-Dnnq-Max-Json-Body-Bytes": "max_json_body_bytes",
    "X-Dnnq-Max-Predict-Body-Bytes": "max_predict_body_bytes",
    "X-Dnnq-Max-Predict-Examples": "max_predict_examples",
    "X-Dnnq-Max-Predict-Input-Values": "max_predict_input_values",
    "X-Dnnq-Max-Predict-Values": "max_predict_values",
}


def limit_headers(settings: ApiSettings) -> dict[str, str]:
    limits = _limits(settings)
    return {header: str(getattr(limits, field)) for header, field in LIMIT_HEADERS.items()}


def _headers_doc(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries that document the limit headers on these statuses."""
    described = {
        header: {
            "description": Limits.model_fields[field].description or field,
            "schema": {"type": "integer", "minimum": 1},
        }
        for header, field in LIMIT_HEADERS.items()
    }
    return {status: {"headers": described} for status in statuses}


@router.get(
    "/v1/limits", response_model=Limits, operation_id="get_limits", tags=["limits"], responses=_headers_doc(200)
)
def get_limits(settings: Settings, tenant: Tenant, response: Response) -> Limits:
    response.headers.update(limit_headers(settings))
    return _limits(settings)


def _merged(*docs: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for doc in docs:
        for status, entry in doc.items():
            out[status] = {**out.get(status, {}), **entry}
    return out


_BINARY_SCHEMA = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()},
        NPY_TYPE: _BINARY_SCHEMA,
        **dict.fromkeys(NPZ_TYPES, _BINARY_SCHEMA),
    },
    "description": "JSON {'inputs': rows}, or examples as rows in one .npy array or in an .npz's array 'X' "
    "(numeric dtypes; more dimensions are flattened per row).",
}


@router.post(
    "/v1/jobs/{job_id}/predict",
    response_model=PredictResponse,
    operation_id="predict",
    tags=["jobs"],
    responses=_merged(problems(404, 409, 413, 415, 422), _headers_doc(200, 404, 409, 413, 415, 422)),
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def predict(
    job_id: str,
    request: Request,
    r: Rds,
    store: Store,
    settings: Settings,
    tenant: Tenant,
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Predict with the trained weights on the CPU; inputs are raw rows (preprocess.scale is applied here)."""
    body = await request.body()  # bounded by app.py's body limit for this content type
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        out = await run_in_threadpool(_predict, job_id, kind, body, r, store, settings, tenant)
    except (Problem, RequestValidationError) as exc:  # answered by the app's own handler, plus the limits
        handler = next(
            request.app.exception_handlers[t] for t in type(exc).__mro__ if t in request.app.exception_handlers
        )
        response: Response = await handler(request, exc)
        response.headers.update(limit_headers(settings))
        return response
    return FiniteJSONResponse(out, headers=limit_headers(settings))


def _predict(
    job_id: str, kind: str, body: bytes, r: Any, store: Any, settings: ApiSettings, tenant: str
) -> dict[str, Any]:
    from dnnq.models import labels_from_output
    from dnnq.models import predict as model_predict

    job = jobs.get_job(r, job_id, tenant)
    if job is None:
        raise job_not_found(job_id)
    if job["status"] != "succeeded":
        raise Problem(409, f"Job '{job_id}' is {job['status']}; its model exists once it has succeeded.")
    spec = job["spec"]
    try:
        preprocess = PreprocessSpec.model_validate(spec.get("preprocess") or {})
    except ValidationError:  # a record written before the spec's bounds: its model cannot be trusted
        raise Problem(
            409, f"Job '{job_id}' was trained with a preprocess.scale this version refuses; train it again."
        ) from None
    # The model is what the weights say, not what the training set's record says: that record goes when
    # its dataset is deleted (allowed once no unfinished job uses it), and the model must outlive it.
    params = _weights(store, job_id, settings)
    n_x = int(params["W1"].shape[1])
    X = _inputs(kind, body, settings, n_x)
    rows = X.shape[0]
    if rows > settings.max_predict_examples:
        raise field_error(
            "inputs",
            f"{rows} examples is over the limit of {settings.max_predict_examples} "
            "(DNNQ_MAX_PREDICT_EXAMPLES); send them in smaller requests.",
        )
    if X.shape[1] != n_x:
        raise field_error(
            "inputs", f"each example needs {n_x} features (the training set's); got rows of {X.shape[1]}."
        )
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
    X = X.astype(np.float64, copy=False)
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
        AL = _forward_in_chunks(model_predict, params, X, hidden, output)
    _finite_rows_or_422(
        AL.T,
        "the model's outputs are not finite numbers (the network's values overflow): "
        "these inputs are far outside the training data's range. Send raw values on the training "
        "data's scale (preprocess.scale is applied here), or retrain with dtype 'float64' or "
        "scaled targets.",
    )
    labels = labels_from_output(AL, output)
    if output == "linear":
        return {"predictions": np.asarray(labels).T.tolist(), "probabilities": None, "labels": None}
    predictions = np.asarray(labels).tolist()
    classes = _class_names(r, store, job)
    names = classes if classes and len(classes) == max(n_y, 2) else None  # sigmoid: 2 classes, 1 output
    return {
        "predictions": predictions,
        "probabilities": AL.T.tolist(),  # (m, n_y) for sigmoid too
        "labels": [names[k] for k in predictions] if names else predictions,
    }


# What one forward pass may hold in activations: every layer's Z and A (the forward keeps its caches)
# for the rows of one chunk: a small request to a model with one very wide layer must not hold rows x width
# twice over (docs/perf.md, 'Hostile requests: the second pass').
FORWARD_BUDGET_BYTES = 64 * 1024 * 1024


def _forward_in_chunks(model_predict: Any, params: dict[str, np.ndarray], X: np.ndarray, hidden: str, output: str):
    """The output activations (n_y, m) for the rows of X, computed a chunk of rows at a time so that the
    hidden layers' activations never take more than FORWARD_BUDGET_BYTES, however wide the model."""
    n_layers = len(params) // 2
    widths = sum(int(params[f"b{l}"].shape[0]) for l in range(1, n_layers + 1))
    itemsize = max(np.dtype(params["W1"].dtype).itemsize, X.dtype.itemsize)
    per_row = 2 * widths * itemsize + X.shape[1] * itemsize  # Z and A per layer, and the row itself
    step = max(1, FORWARD_BUDGET_BYTES // per_row)
    parts = [
        np.asarray(model_predict(params, X[s : s + step].T, hidden_activation=hidden, output=output, proba=True))
        for s in range(0, X.shape[0], step)
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _weights(store: Any, job_id: str, settings: ApiSettings) -> dict[str, np.ndarray]:
    """The job's weights, in the dtype it trained in; a 409 before any is read when the file is over
    max_predict_model_bytes (a model as large as a worker may train is not the API's to load per request)."""
    try:
        f = store.open_read(f"jobs/{job_id}/weights.npz")
    except KeyError:
        raise Problem(404, f"Job '{job_id}' has no npz weights.") from None
    with f:
        size = f.seek(0, io.SEEK_END)
        if size > settings.max_predict_model_bytes:
            raise Problem(
                409,
                f"Job '{job_id}''s weights are {size} bytes, over the {settings.max_predict_model_bytes} bytes "
                "the API loads to predict (DNNQ_MAX_PREDICT_MODEL_BYTES): download them "
                f"(GET /v1/jobs/{job_id}/weights?format=onnx or npz) and predict where they fit, or ask the "
                "operator to raise the limit.",
            )
        f.seek(0)
        with np.load(io.BytesIO(f.read()), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def _class_names(r: Any, store: Any, job: dict[str, Any]) -> list | None:
    """The training set's class names: from its record, or, once it was deleted, from the job's model.json
    (written with the weights)."""
    meta = datasets.get_dataset(r, job["dataset_id"])
    if meta is not None:
        return meta.get("classes")
    try:
        return json.loads(store.get(f"jobs/{job['id']}/model.json")).get("classes")
    except (KeyError, ValueError, AttributeError):
        return None


def _inputs(kind: str, body: bytes, settings: ApiSettings, n_x: int) -> np.ndarray:
    """The request's examples as a 2-D numeric array (rows = examples), from JSON or a binary body."""
    if kind == NPY_TYPE:
        X = _read_npy(body, _input_values_limit(settings))
    elif kind in NPZ_TYPES:
        X = _read_npz_x(body, settings)
    elif kind == "application/json" or kind.endswith("+json"):
        inputs = _json_inputs(body).inputs
        widths = {len(row) for row in inputs}
        if len(widths) > 1:
            raise field_error(
                "inputs", f"each example needs {n_x} features (the training set's); got rows of {sorted(widths)}."
            )
        return np.asarray(inputs, dtype=np.float64)
    else:
        raise Problem(
            415,
            f"Content-Type {kind!r} is not accepted here; send application/json ({{'inputs': rows}}), "
            f"{NPY_TYPE} (numpy.save) or application/x-npz (numpy.savez with an array X).",
        )
    if X.ndim == 0 or X.shape[0] == 0:
        raise field_error("inputs", f"the array has shape {X.shape}; send examples as rows (at least one).")
    return X.reshape(1, X.size) if X.ndim == 1 else X.reshape(X.shape[0], math.prod(X.shape[1:]))


def _json_inputs(body: bytes) -> PredictRequest:
    """What FastAPI does with a JSON body, with its 422s: the route reads the body itself for binary types."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", 0),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": short(exc)},
                }
            ]
        ) from None
    try:
        return PredictRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


_MAX_NDIM = 32  # numpy's own limit is 64; an example flattened from more than 31 axes is not a request


def _shown(shape: tuple[int, ...]) -> str:
    """A declared shape as a message shows it: its first 8 dimensions (a header may declare thousands)."""
    return str(tuple(shape)) if len(shape) <= 8 else str(tuple(shape[:8]))[:-1] + ", ...)"


def _check_header(shape: tuple[int, ...], dtype: np.dtype, limit_values: int) -> None:
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.subdtype is not None:
        raise field_error(
            "inputs", f"the array's dtype is {dtype}; send numbers (bool, int, uint or float), never pickled objects."
        )
    if any(d < 0 for d in shape):
        raise field_error("inputs", f"the array declares a negative shape {_shown(shape)}.")
    values = declared_bytes(shape, 1)
    if values > limit_values:
        raise Problem(
            413,
            f"The array declares {values} values (shape {_shown(shape)}); one request takes at most "
            f"{limit_values} (GET /v1/limits): send fewer rows per request.",
        )
    # Within the limit, numpy still builds no array of more than 64 dimensions, nor one whose dimensions
    # (zeros aside) overflow its index type: (2**62, 0) holds no value yet is refused by reshape and
    # numpy.empty (a 500 here). Rows x features needs two; no dimension of a request within the limit
    # can exceed it.
    if len(shape) > _MAX_NDIM or any(d > limit_values for d in shape):
        raise field_error(
            "inputs",
            f"the array declares shape {_shown(shape)}; "
            f"send examples as rows: at most {_MAX_NDIM} dimensions, none over {limit_values}.",
        )


def _read_npy(body: bytes, limit_values: int) -> np.ndarray:
    fh = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unknown .npy format version {version}")
    except Exception as exc:  # numpy parses the header's dict literal: SyntaxError, ValueError, EOFError...
        raise field_error(
            "inputs", f"the body is not a valid .npy array ({short(exc)}); write it with numpy.save."
        ) from None
    _check_header(shape, dtype, limit_values)
    data = memoryview(body)[fh.tell() :]
    expected = declared_bytes(shape, dtype.itemsize)
    if len(data) != expected:
        raise field_error(
            "inputs",
            f"the .npy header declares shape {tuple(shape)} of {dtype} ({expected} bytes) but {len(data)} bytes "
            "follow it: the body is truncated or padded. Send the whole numpy.save output.",
        )
    X = np.frombuffer(data, dtype=dtype)
    return X.reshape(shape[::-1]).T if fortran else X.reshape(shape)


def _read_npz_x(body: bytes, settings: ApiSettings) -> np.ndarray:
    """Array X of an .npz, through service/formats/npz.py's checks (directory, member, header, CRC)."""
    fileobj = io.BytesIO(body)
    try:
        _check_directory_size(fileobj)
        try:
            zf = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise UploadError(422, f"The body is not a valid .npz ({short(exc)}): write it with numpy.savez.") from None
        with zf:
            member = next((m for m in zf.infolist() if m.filename == "X.npy"), None)
            if member is None:
                raise UploadError(422, "The .npz has no array 'X': write it as numpy.savez(f, X=rows).")
            if member.file_size > settings.max_predict_body_bytes:
                raise UploadError(
                    413,
                    f"Array 'X' declares {member.file_size} bytes uncompressed; the limit is "
                    f"{settings.max_predict_body_bytes} (GET /v1/limits): send fewer rows per request.",
                )
            _check_member(member, "X")
            shape, fortran, dtype, header_bytes = _read_header(zf, member, "X")
            _check_header(shape, dtype, _input_values_limit(settings))
            return _read_data(zf, member, "X", shape, fortran, dtype, header_bytes)
    except UploadError as exc:
        raise Problem(exc.status, exc.detail) from None


def _finite_rows_or_422(rows: np.ndarray, what: str) -> None:
    """A 422 on `inputs` naming the first rows (examples first) where any value is NaN or infinite."""
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        where = np.flatnonzero(bad)
        listed = ", ".join(str(i) for i in where[:5]) + (f" and {where.size - 5} more" if where.size > 5 else "")
        raise field_error("inputs", f"{'row' if where.size == 1 else 'rows'} {listed}: {what}")
