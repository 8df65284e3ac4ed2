"""POST /v1/jobs/{id}/predict: the trained weights applied on the CPU to rows the client sends."""

from __future__ import annotations

import io

import numpy as np
from fastapi import APIRouter
from pydantic import ValidationError

from dnnq.service.deps import Rds, Settings, Store, Tenant
from dnnq.service.errors import Problem, field_error, problems
from dnnq.service.jobdesk import job_not_found
from dnnq.service.schemas import PredictRequest
from dnnq.workers import datasets, jobs
from dnnq.workers.spec import PreprocessSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("/{job_id}/predict", responses=problems(404, 409))
def predict(job_id: str, body: PredictRequest, r: Rds, store: Store, settings: Settings, tenant: Tenant) -> dict:
    """Predict with the trained weights on the CPU; inputs are raw rows (preprocess.scale is applied here)."""
    from dnnq.models import labels_from_output
    from dnnq.models import predict as model_predict

    job = jobs.get_job(r, job_id, tenant)
    if job is None:
        raise job_not_found(job_id)
    if job["status"] != "succeeded":
        raise Problem(409, f"Job '{job_id}' is {job['status']}; its model exists once it has succeeded.")
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
