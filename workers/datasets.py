"""Dataset records: metadata in Redis (dnnq:dataset:{id}), arrays in the artifact store.

The only writer of dataset records. Arrays are stored examples-first in `datasets/{id}.npz`:
`X` (m, n_features) float32/float64 and `Y` (m, n_outputs). The record is written only after
the arrays are stored, so a record always points at a complete file.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import numpy as np

from workers.jobs import ID_RE, now_iso, validate_id
from workers.store import ArtifactStore

__all__ = [
    "LABEL_KINDS",
    "DatasetError",
    "dataset_id_for",
    "get_dataset",
    "get_dataset_async",
    "list_datasets",
    "load_arrays",
    "save_dataset",
]

LABEL_KINDS = ("binary", "integer", "onehot", "continuous")
_INT_FIELDS = ("n_examples", "n_features", "n_outputs", "n_classes", "size_bytes")


class DatasetError(ValueError):
    """Arrays that cannot be a dataset; the message says what is wrong and how to fix it."""



def tenant_datasets_key(tenant: str) -> str:
    """The tenant's dataset listing, in the dnnq:tenant:{tenant}:... namespace (see workers.jobs)."""
    return f"dnnq:tenant:{tenant}:datasets"

def _key(dataset_id: str) -> str:
    return f"dnnq:dataset:{validate_id(dataset_id, 'dataset')}"


def _array_key(dataset_id: str) -> str:
    return f"datasets/{validate_id(dataset_id, 'dataset')}.npz"


def _canonical(X: np.ndarray, Y: np.ndarray, classes: list | None, label_kind: str) -> bytes:
    """Content bytes the id is derived from: dtypes, shapes, C-order data, classes and label kind."""
    h = hashlib.sha256()
    for a in (X, Y):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps([label_kind, classes]).encode())
    return h.digest()


def dataset_id_for(tenant: str, X: np.ndarray, Y: np.ndarray, classes: list | None, label_kind: str) -> str:
    """First 24 hex chars of sha256(tenant + canonical content)."""
    return hashlib.sha256(tenant.encode() + b"\0" + _canonical(X, Y, classes, label_kind)).hexdigest()[:24]


def _normalise(X: Any, Y: Any, label_kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Check shapes and labels; returns (X, Y, n_classes) with Y two-dimensional (m, n_outputs)."""
    if label_kind not in LABEL_KINDS:
        raise DatasetError(f"label_kind must be one of {', '.join(LABEL_KINDS)}. Got {label_kind!r} instead.")
    X = np.asarray(X)
    Y = np.asarray(Y)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DatasetError(f"X must be a 2-D array (examples, features) with at least one of each. Got shape {X.shape}.")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_) or np.iscomplexobj(X):
        raise DatasetError(f"X must hold real numbers. Got dtype {X.dtype}.")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise DatasetError("X contains NaN or infinite values: remove or impute them before uploading.")
    if Y.ndim == 1:
        Y = Y.reshape(-1, 1)
    if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise DatasetError(
            f"Y must have one row per example of X ({X.shape[0]} examples). Got shape {Y.shape}: "
            "store labels examples-first, shape (m,) or (m, n_outputs)."
        )
    if not (np.issubdtype(Y.dtype, np.number) or Y.dtype == np.bool_) or np.iscomplexobj(Y):
        raise DatasetError(f"Y must hold numbers. Got dtype {Y.dtype}: map class names to integers first.")
    if not np.isfinite(Y.astype(np.float64)).all():
        raise DatasetError("Y contains NaN or infinite values.")
    n_classes = 0
    if label_kind == "binary":
        if Y.shape[1] != 1 or not np.isin(Y, (0, 1)).all():
            raise DatasetError("label_kind 'binary' needs one column of 0/1 labels; use 'integer' for more classes.")
        Y, n_classes = Y.astype(X.dtype), 2
    elif label_kind == "integer":
        if Y.shape[1] != 1 or (Y != np.round(Y)).any() or (Y < 0).any():
            raise DatasetError("label_kind 'integer' needs one column of class indices 0, 1, 2, ...")
        Y = Y.astype(np.int64)
        n_classes = int(Y.max()) + 1
    elif label_kind == "onehot":
        if Y.shape[1] < 2 or not np.isin(Y, (0, 1)).all() or (Y.sum(axis=1) != 1).any():
            raise DatasetError("label_kind 'onehot' needs rows with exactly one 1 and at least two columns.")
        Y, n_classes = Y.astype(X.dtype), Y.shape[1]
    else:
        Y = Y.astype(X.dtype)
    return X, Y, n_classes


def save_dataset(
    r,
    store: ArtifactStore,
    *,
    tenant: str,
    name: str,
    source: str,
    X: Any,
    Y: Any,
    classes: list | None = None,
    label_kind: str,
) -> dict:
    """Store arrays then the record; an identical upload returns the existing record untouched."""
    X, Y, n_classes = _normalise(X, Y, label_kind)
    if classes is not None:
        classes = list(classes)
        if label_kind in ("binary", "integer", "onehot") and len(classes) < n_classes:
            raise DatasetError(f"classes lists {len(classes)} names but the labels use {n_classes} classes.")
        n_classes = max(n_classes, len(classes)) if label_kind != "continuous" else 0
    dataset_id = dataset_id_for(tenant, X, Y, classes, label_kind)
    key, array_key = _key(dataset_id), _array_key(dataset_id)
    existing = get_dataset(r, dataset_id)
    if existing is not None and store.exists(array_key):
        return existing
    buf = io.BytesIO()
    np.savez(buf, X=X, Y=Y)
    data = buf.getvalue()
    sha = store.put(array_key, data)
    record = {
        "id": dataset_id,
        "tenant": tenant,
        "name": name,
        "source": source,
        "sha256": sha,
        "n_examples": str(X.shape[0]),
        "n_features": str(X.shape[1]),
        "n_outputs": str(Y.shape[1]),
        "n_classes": str(n_classes),
        "label_kind": label_kind,
        "classes": json.dumps(classes) if classes is not None else "",
        "dtype": X.dtype.name,
        "created_at": now_iso(),
        "size_bytes": str(len(data)),
    }
    pipe = r.pipeline(transaction=True)
    pipe.hset(key, mapping=record)
    pipe.zadd(tenant_datasets_key(tenant), {dataset_id: time.time()})
    pipe.execute()
    return _decode(record)


def _decode(raw: dict[str, str]) -> dict:
    d: dict[str, Any] = dict(raw)
    for k in _INT_FIELDS:
        if k in d:
            d[k] = int(d[k])
    d["classes"] = json.loads(raw["classes"]) if raw.get("classes") else None
    return d


def get_dataset(r, dataset_id: str, tenant: str | None = None) -> dict | None:
    """The record, or None when absent, malformed id, or another tenant's."""
    if not isinstance(dataset_id, str) or not ID_RE.match(dataset_id):
        return None
    return _visible(r.hgetall(_key(dataset_id)), tenant)


async def get_dataset_async(ar, dataset_id: str, tenant: str | None = None) -> dict | None:
    """get_dataset on a redis.asyncio client (the submit route)."""
    if not isinstance(dataset_id, str) or not ID_RE.match(dataset_id):
        return None
    return _visible(await ar.hgetall(_key(dataset_id)), tenant)


def _visible(raw: dict, tenant: str | None) -> dict | None:
    if not raw or (tenant is not None and raw.get("tenant") != tenant):
        return None
    return _decode(raw)


def list_datasets(r, tenant: str, offset: int = 0, limit: int = 50) -> tuple[list[dict], int]:
    """A tenant's datasets, newest first: (page, total)."""
    zkey = tenant_datasets_key(tenant)
    total = r.zcard(zkey)
    ids = r.zrevrange(zkey, offset, offset + limit - 1) if limit > 0 else []
    pipe = r.pipeline(transaction=False)
    for dataset_id in ids:
        pipe.hgetall(_key(dataset_id))
    return [_decode(raw) for raw in pipe.execute() if raw], total


def load_arrays(store: ArtifactStore, dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) examples-first, as stored. Never unpickles."""
    try:
        data = store.get(_array_key(dataset_id))
    except KeyError:
        raise LookupError(f"The arrays of dataset '{dataset_id}' are missing from the artifact store.") from None
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return npz["X"], npz["Y"]


