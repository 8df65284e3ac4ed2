"""Dataset records: metadata in Redis (dnnq:dataset:{id}), arrays in the artifact store.

The only writer of dataset records. Arrays are stored examples-first in `datasets/{id}.npz`:
`X` (m, n_features) float32/float64 and `Y` (m, n_outputs), written uncompressed (np.savez) in
C order, so a reader finds any row at a computed offset (read_preview reads only the rows it
shows). The record is written only after the file is in place, so a record always points at a
complete file.

Uploads are parsed and written by a sandboxed child (service/sandbox.py) that calls
write_dataset_file; the API then moves the file in with save_dataset_file. save_dataset does both
in-process, for arrays we generated ourselves (synthetic datasets, tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from dnnq.workers import keys, trash
from dnnq.workers.artifact_store import ArtifactStore
from dnnq.workers.jobs import ID_RE, now_iso, validate_id
from dnnq.workers.scripts import get as script

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "QuotaExceeded",
    "LABEL_KINDS",
    "DatasetError",
    "DatasetInUse",
    "DatasetNotFound",
    "ParsedInfo",
    "dataset_id_for",
    "dataset_id_from_digest",
    "delete_dataset",
    "get_dataset",
    "get_dataset_async",
    "list_datasets",
    "load_arrays",
    "prepare",
    "read_layout",
    "read_preview",
    "save_dataset",
    "save_dataset_file",
    "write_dataset_file",
]

LABEL_KINDS = ("binary", "integer", "onehot", "continuous")
_INT_FIELDS = ("n_examples", "n_features", "n_outputs", "n_classes", "size_bytes")


class DatasetError(ValueError):
    """Arrays that cannot be a dataset; the message says what is wrong and how to fix it."""


class DatasetNotFound(LookupError):
    def __init__(self, dataset_id: str) -> None:
        super().__init__(f"No dataset with id '{dataset_id}'.")
        self.dataset_id = dataset_id


class QuotaExceeded(Exception):
    """save_dataset_file refused: the tenant's datasets and this one would pass its quota."""

    def __init__(self, size: int, used: int, quota: int) -> None:
        super().__init__(
            f"This dataset ({size} bytes stored) would take this API key's datasets to {used + size} bytes, over "
            f"its quota of {quota} bytes (DNNQ_MAX_DATASET_BYTES_PER_TENANT; {used} bytes are in use): delete "
            "datasets you no longer need (DELETE /v1/datasets/{id}), or ask the operator to raise the quota."
        )
        self.size, self.used, self.quota = size, used, quota


class DatasetInUse(Exception):
    """delete_dataset refused: a queued, running or cancelling job uses the dataset."""

    def __init__(self, dataset_id: str, job_id: str) -> None:
        super().__init__(
            f"Dataset '{dataset_id}' is used by job '{job_id}', which has not finished: wait for it to "
            f"finish or cancel it (POST /v1/jobs/{job_id}/cancel), then delete the dataset."
        )
        self.dataset_id, self.job_id = dataset_id, job_id


@dataclass(frozen=True)
class ParsedInfo:
    """What a stored dataset file holds: the record's fields, and the digest its id derives from."""

    n_examples: int
    n_features: int
    n_outputs: int
    n_classes: int
    classes: list[Any] | None
    label_kind: str
    dtype: str  # X's dtype name: float32 or float64
    content_digest: str  # hex of _canonical(): the id is sha256(tenant + this)
    # The largest |value| of X and of Y: a job whose dtype cannot hold them (after preprocess.scale) is
    # refused at submission (workers.spec.to_train_config) rather than failed in the worker.
    x_abs_max: float = 0.0
    y_abs_max: float = 0.0


def tenant_datasets_key(tenant: str) -> str:
    """The tenant's dataset listing, in the dnnq:tenant:{tenant}:... namespace (see workers.keys)."""
    return keys.tenant_datasets(tenant)


def _key(dataset_id: str) -> str:
    return keys.dataset(dataset_id)


def _array_key(dataset_id: str) -> str:
    return f"datasets/{validate_id(dataset_id, 'dataset')}.npz"


def _canonical(X: np.ndarray, Y: np.ndarray, classes: list[Any] | None, label_kind: str) -> bytes:
    """Content bytes the id is derived from: dtypes, shapes, C-order data, classes and label kind."""
    h = hashlib.sha256()
    for a in (X, Y):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data.cast("B"))  # the C-order bytes, without a copy of them
    h.update(json.dumps([label_kind, classes]).encode())
    return h.digest()


def dataset_id_for(tenant: str, X: np.ndarray, Y: np.ndarray, classes: list[Any] | None, label_kind: str) -> str:
    """First 24 hex chars of sha256(tenant + canonical content)."""
    return dataset_id_from_digest(tenant, _canonical(X, Y, classes, label_kind).hex())


def dataset_id_from_digest(tenant: str, content_digest: str) -> str:
    """dataset_id_for, from the content digest a ParsedInfo carries."""
    return hashlib.sha256(tenant.encode() + b"\0" + bytes.fromhex(content_digest)).hexdigest()[:24]


def _normalise(X: Any, Y: Any, label_kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Check shapes and labels; returns (X, Y, n_classes) with Y two-dimensional (m, n_outputs)."""
    if label_kind not in LABEL_KINDS:
        raise DatasetError(f"label_kind must be one of {', '.join(LABEL_KINDS)}. Got {label_kind!r} instead.")
    X = np.asarray(X)
    Y = np.asarray(Y)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DatasetError(
            f"X must be a 2-D array (examples, features) with at least one of each. Got shape {X.shape}."
        )
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
        if Y.shape[1] != 1 or (np.round(Y) != Y).any() or (Y < 0).any():
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


def prepare(
    X: Any, Y: Any, classes: list[Any] | None, label_kind: str
) -> tuple[np.ndarray, np.ndarray, list[Any] | None, int]:
    """_normalise plus the class names: (X, Y, classes, n_classes), or DatasetError."""
    X, Y, n_classes = _normalise(X, Y, label_kind)
    if classes is not None:
        classes = list(classes)
        if label_kind in ("binary", "integer", "onehot") and len(classes) < n_classes:
            raise DatasetError(f"classes lists {len(classes)} names but the labels use {n_classes} classes.")
        n_classes = max(n_classes, len(classes)) if label_kind != "continuous" else 0
    return X, Y, classes, n_classes


def write_dataset_file(X: Any, Y: Any, classes: list[Any] | None, label_kind: str, out: BinaryIO) -> ParsedInfo:
    """Normalise the arrays, write them to `out` in the stored layout and describe them.

    The layout is np.savez's (uncompressed zip of two .npy members) with both arrays in C order: a
    features-first upload arrives transposed (Fortran order) and is copied once here, so that every
    stored row is contiguous and read_preview can read row i at a computed offset.
    """
    X, Y, classes, n_classes = prepare(X, Y, classes, label_kind)
    X, Y = np.ascontiguousarray(X), np.ascontiguousarray(Y)
    np.savez(out, X=X, Y=Y)
    return ParsedInfo(
        n_examples=int(X.shape[0]),
        n_features=int(X.shape[1]),
        n_outputs=int(Y.shape[1]),
        n_classes=int(n_classes),
        classes=classes,
        label_kind=label_kind,
        dtype=X.dtype.name,
        content_digest=_canonical(X, Y, classes, label_kind).hex(),
        x_abs_max=_abs_max(X),
        y_abs_max=_abs_max(Y),
    )


def _abs_max(a: np.ndarray) -> float:
    """max |a| as a Python float (a is finite and not empty: _normalise checked)."""
    return float(max(-float(a.min()), float(a.max())))


def save_dataset(
    r: redis.Redis,
    store: ArtifactStore,
    *,
    tenant: str,
    name: str,
    source: str,
    X: Any,
    Y: Any,
    classes: list[Any] | None = None,
    label_kind: str,
    quota_bytes: int = 0,
) -> dict[str, Any]:
    """Store arrays then the record, in this process (only for arrays we made: uploads go through the
    sandbox); an identical dataset returns the existing record untouched."""
    path = store.new_staging_path(".npz")
    try:
        with open(path, "xb") as out:
            info = write_dataset_file(X, Y, classes, label_kind, out)
        return save_dataset_file(
            r, store, tenant=tenant, name=name, source=source, path=path, info=info, quota_bytes=quota_bytes
        )
    finally:
        path.unlink(missing_ok=True)


def save_dataset_file(
    r: redis.Redis,
    store: ArtifactStore,
    *,
    tenant: str,
    name: str,
    source: str,
    path: Path | str,
    info: ParsedInfo,
    quota_bytes: int = 0,
) -> dict[str, Any]:
    """Move a file written by write_dataset_file into the store, then write its record.

    Identical content (same tenant and digest) returns the existing record and leaves `path` where it
    is (the caller removes it); otherwise `path` is consumed. ``quota_bytes`` (0: none): QuotaExceeded
    when the tenant's stored datasets and this one would pass it (checked before the file is stored,
    and again atomically with the record, which two uploads at once cannot both pass).
    """
    dataset_id = dataset_id_from_digest(tenant, info.content_digest)
    key, array_key = _key(dataset_id), _array_key(dataset_id)
    existing = get_dataset(r, dataset_id)
    if existing is not None and store.exists(array_key):
        return existing
    size = os.path.getsize(path)
    if quota_bytes and (used := _bytes_stored(r, tenant)) + size > quota_bytes:
        raise QuotaExceeded(size, used, quota_bytes)  # before the store is written to
    sha = store.put_file(array_key, path)
    record: dict[str, str] = {
        "id": dataset_id,
        "tenant": tenant,
        "name": name,
        "source": source,
        "sha256": sha,
        "n_examples": str(info.n_examples),
        "n_features": str(info.n_features),
        "n_outputs": str(info.n_outputs),
        "n_classes": str(info.n_classes),
        "label_kind": info.label_kind,
        "classes": json.dumps(info.classes) if info.classes is not None else "",
        "dtype": info.dtype,
        "x_abs_max": repr(info.x_abs_max),
        "y_abs_max": repr(info.y_abs_max),
        "created_at": now_iso(),
        "size_bytes": str(size),
    }
    pairs = [item for field_value in record.items() for item in field_value]
    outcome, used = script("create_dataset")(
        r,
        [key, tenant_datasets_key(tenant), keys.TRASH],
        [quota_bytes, size, time.time(), f"{keys.PREFIX}dataset:", array_key, *pairs],
    )
    if outcome == "over":  # another upload took the room meanwhile
        trash.remove(r, store, array_key)
        raise QuotaExceeded(size, int(used), quota_bytes)
    if outcome == "exists":  # the same content, stored meanwhile by another request
        return get_dataset(r, dataset_id) or _decode(record)
    return _decode(record)


def _bytes_stored(r: redis.Redis, tenant: str) -> int:
    """The sum of the tenant's datasets' stored sizes (what create_dataset.lua checks the quota against)."""
    ids = r.zrange(tenant_datasets_key(tenant), 0, -1)
    pipe = r.pipeline(transaction=False)
    for dataset_id in ids:
        pipe.hget(_key(str(dataset_id)), "size_bytes")
    return sum(int(size or 0) for size in pipe.execute())


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    d: dict[str, Any] = dict(raw)
    for k in _INT_FIELDS:
        if k in d:
            d[k] = int(d[k])
    for k in ("x_abs_max", "y_abs_max"):  # absent from records stored before they were kept
        if k in d:
            d[k] = float(d[k])
    d["classes"] = json.loads(raw["classes"]) if raw.get("classes") else None
    return d


def get_dataset(r: redis.Redis, dataset_id: str, tenant: str | None = None) -> dict[str, Any] | None:
    """The record, or None when absent, malformed id, or another tenant's."""
    if not isinstance(dataset_id, str) or not ID_RE.match(dataset_id):
        return None
    return _visible(r.hgetall(_key(dataset_id)), tenant)


async def get_dataset_async(
    ar: redis.asyncio.Redis, dataset_id: str, tenant: str | None = None
) -> dict[str, Any] | None:
    """get_dataset on a redis.asyncio client (the submit route)."""
    if not isinstance(dataset_id, str) or not ID_RE.match(dataset_id):
        return None
    return _visible(await ar.hgetall(_key(dataset_id)), tenant)


def _visible(raw: dict[Any, Any], tenant: str | None) -> dict[str, Any] | None:
    """The decoded record (str keys and values: the client decodes responses), None when absent or
    another tenant's."""
    if not raw or (tenant is not None and raw.get("tenant") != tenant):
        return None
    return _decode(raw)


def list_datasets(r: redis.Redis, tenant: str, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """A tenant's datasets, newest first: (page, total)."""
    zkey = tenant_datasets_key(tenant)
    total = r.zcard(zkey)
    ids = r.zrevrange(zkey, offset, offset + limit - 1) if limit > 0 else []
    pipe = r.pipeline(transaction=False)
    for dataset_id in ids:  # str: the client decodes responses
        pipe.hgetall(_key(str(dataset_id)))
    return [_decode(raw) for raw in pipe.execute() if raw], total


def delete_dataset(r: redis.Redis, store: ArtifactStore, dataset_id: str, tenant: str) -> None:
    """Delete the tenant's dataset: its record and listing (one script, refused while an unfinished job
    of the tenant uses it, and atomic with create_job's check that a submitted job's datasets exist),
    then its file. Raises DatasetNotFound (absent, malformed id, another tenant's) or DatasetInUse."""
    if not isinstance(dataset_id, str) or not ID_RE.match(dataset_id):
        raise DatasetNotFound(str(dataset_id))
    array_key = _array_key(dataset_id)
    outcome, detail = script("delete_dataset")(
        r,
        [_key(dataset_id), tenant_datasets_key(tenant), keys.unfinished(tenant), keys.TRASH],
        [dataset_id, tenant, f"{keys.PREFIX}job:", array_key],
    )
    if outcome == "missing":
        raise DatasetNotFound(dataset_id)
    if outcome == "in_use":
        raise DatasetInUse(dataset_id, detail)
    trash.remove(r, store, array_key)


def load_arrays(store: ArtifactStore, dataset_id: str, sha256: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) examples-first, as stored. Never unpickles. Read whole, from a local copy: on an object
    store the worker's dataset cache keeps it by id and `sha256` (the record's), downloaded once."""
    try:
        f = store.open_cached(_array_key(dataset_id), sha256)
    except KeyError:
        raise LookupError(f"The arrays of dataset '{dataset_id}' are missing from the artifact store.") from None
    with f, np.load(f, allow_pickle=False) as npz:
        return npz["X"], npz["Y"]


def map_arrays(store: ArtifactStore, dataset_id: str, sha256: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) examples-first, as stored, with X memory-mapped read-only: its pages are read as they are
    used and belong to the file, so a pass over the rows in chunks (scoring) holds no copy of the data
    beside the training arrays. Y (a column or a few) is read whole. Stored files are replaced by rename,
    never rewritten in place, so the mapping stays whole while it is used."""
    try:
        f = store.open_cached(_array_key(dataset_id), sha256)
    except KeyError:
        raise LookupError(f"The arrays of dataset '{dataset_id}' are missing from the artifact store.") from None
    with f:
        layout = read_layout(f)
        x, y = layout["X"], layout["Y"]
        X = np.memmap(f, x.dtype, "r", x.data_offset, x.shape, "F" if x.fortran_order else "C")
        return X, _read_block(f, y, y.shape[0], None)


# --- reading a slice of a stored file ---------------------------------------------------------

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes
_STORED_DTYPES = {np.dtype(t) for t in ("<f4", "<f8", "<i8")}
_MAX_NPY_HEADER = 64 * 1024


@dataclass(frozen=True)
class _Member:
    data_offset: int  # of the array's first element, in the .npz file
    shape: tuple[int, int]
    dtype: np.dtype
    fortran_order: bool


def read_layout(f: BinaryIO) -> dict[str, _Member]:
    """Where X's and Y's data start in a stored .npz, from the zip directory, the local file headers
    and the .npy headers only (a few hundred bytes). DatasetError if the file is not the stored layout.
    """
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetError(f"The stored dataset file is not a readable zip archive ({exc}).") from None
    members = {info.filename: info for info in zf.infolist()}
    layout = {}
    for name in ("X", "Y"):
        info = members.get(f"{name}.npy")
        if info is None or info.compress_type != zipfile.ZIP_STORED or info.header_offset < 0:
            raise DatasetError(f"The stored dataset file has no uncompressed member {name}.npy.")
        f.seek(info.header_offset)
        raw = f.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
            raise DatasetError(f"The stored dataset file's entry {name}.npy has a bad local header.")
        fields = _LOCAL_HEADER.unpack(raw)
        start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]  # + name + extra field
        f.seek(start)
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=_MAX_NPY_HEADER)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=_MAX_NPY_HEADER)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, SyntaxError, OSError) as exc:
            raise DatasetError(f"The stored dataset file's {name}.npy has a bad header ({exc}).") from None
        data_offset = f.tell()
        if dtype not in _STORED_DTYPES or len(shape) != 2:
            raise DatasetError(f"The stored dataset file's {name} is {dtype} {shape}, not a 2-D numeric array.")
        n_bytes = shape[0] * shape[1] * dtype.itemsize  # Python ints: no overflow
        if data_offset + n_bytes > start + info.compress_size:
            raise DatasetError(f"The stored dataset file's {name}.npy is shorter than its header says.")
        layout[name] = _Member(data_offset, (int(shape[0]), int(shape[1])), dtype, bool(fortran_order))
    return layout


def _read_exact(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise DatasetError("The stored dataset file ends before its arrays do.")
    return data


def _read_block(f: BinaryIO, member: _Member, rows: int, cols: int | None) -> np.ndarray:
    """member[:rows, :cols] read with one seek and read per row (C order) or per column (Fortran order,
    files stored before C order was enforced)."""
    m, n = member.shape
    rows, cols = min(rows, m), n if cols is None else min(cols, n)
    size = member.dtype.itemsize
    if not member.fortran_order:
        if cols == n:
            data = _read_exact(f, member.data_offset, rows * n * size)
        else:
            data = b"".join(_read_exact(f, member.data_offset + i * n * size, cols * size) for i in range(rows))
        return np.frombuffer(data, member.dtype).reshape(rows, cols)
    data = b"".join(_read_exact(f, member.data_offset + j * m * size, rows * size) for j in range(cols))
    return np.frombuffer(data, member.dtype).reshape(cols, rows).T


def read_preview(
    store: ArtifactStore, dataset_id: str, rows: int, features: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(X[:rows, :features], Y[:rows]) read from the stored file without loading it: the zip
    directory, two .npy headers and the rows shown. `features=None`: whole rows.
    LookupError when the file is missing, DatasetError when it is not the stored layout."""
    try:
        f = store.open_read(_array_key(dataset_id))
    except KeyError:
        raise LookupError(f"The arrays of dataset '{dataset_id}' are missing from the artifact store.") from None
    with f:
        layout = read_layout(f)
        return _read_block(f, layout["X"], rows, features), _read_block(f, layout["Y"], rows, None)
