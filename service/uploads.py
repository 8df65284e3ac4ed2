"""Parse uploaded datasets (.npz, .csv, .h5) into examples-first arrays.

Pure functions: bytes in, `ParsedDataset` out, or `UploadError(status, detail)`. Nothing here
touches Redis or disk. Sizes are checked from what the file declares BEFORE its arrays are read
(zip members' sizes, .npy headers, HDF5 dataset shapes), so a small file that expands into a huge
array is refused with a 413 without allocating it. Client data is never unpickled.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["ParsedDataset", "UploadError", "UploadLimits", "parse_upload", "labels_from"]


class UploadError(Exception):
    """A rejected upload: `status` (413 or 422) and a detail that says what to fix."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class UploadLimits:
    max_examples: int
    max_features: int
    max_array_bytes: int  # declared (uncompressed) size of all arrays together


@dataclass
class ParsedDataset:
    X: np.ndarray            # (m, n_features) float32 when exact for the upload's dtype, else float64
    Y: np.ndarray            # (m, n_outputs) float64
    classes: list | None     # original label values, index = class id; None for continuous
    label_kind: str          # binary | integer | onehot | continuous


def parse_upload(
    filename: str,
    data: bytes,
    limits: UploadLimits,
    *,
    target: str | None = None,
    x_key: str = "X",
    y_key: str = "Y",
    layout: str = "examples_first",
) -> ParsedDataset:
    """Dispatch on the file extension; `layout="features_first"` accepts X as (n_x, m)."""
    if layout not in ("examples_first", "features_first"):
        raise UploadError(422, f"layout must be 'examples_first' or 'features_first'; got {layout!r}.")
    if not data:
        raise UploadError(422, "The uploaded file is empty.")
    name = (filename or "").lower()
    if name.endswith(".npz"):
        X, Y = _read_npz(data, limits, x_key, y_key)
    elif name.endswith(".csv"):
        return _finish_csv(data, limits, target)
    elif name.endswith((".h5", ".hdf5")):
        X, Y = _read_h5(data, limits, x_key, y_key)
    else:
        raise UploadError(422, f"Unsupported file type {filename!r}: upload a .npz, .csv or .h5 file.")
    if layout == "features_first":
        if X.ndim != 2:
            raise UploadError(422, f"layout=features_first needs a 2-D X (n_x, m); got shape {X.shape}.")
        X = X.T
        Y = Y.T if Y.ndim == 2 else Y
    return _finish_arrays(X, Y, limits)


# --- formats -------------------------------------------------------------------------------

def _check_declared(shape: tuple, itemsize: int, what: str, limits: UploadLimits, total: list) -> None:
    n_bytes = int(np.prod(shape, dtype=np.int64)) * itemsize if shape else itemsize
    total[0] += n_bytes
    if total[0] > limits.max_array_bytes:
        raise UploadError(
            413, f"The arrays in this file declare {total[0]} bytes when loaded ({what} {tuple(shape)}); "
            f"the limit is {limits.max_array_bytes}. Upload a smaller dataset.")


def _read_npz(data: bytes, limits: UploadLimits, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UploadError(422, "This .npz is not a valid zip archive: save it with numpy.savez.") from None
    with zf:
        members = {info.filename: info for info in zf.infolist()}
        declared = sum(info.file_size for info in members.values())
        if declared > limits.max_array_bytes:
            raise UploadError(
                413, f"This .npz declares {declared} bytes uncompressed; the limit is "
                f"{limits.max_array_bytes}. Upload a smaller dataset.")
        arrays = {}
        total = [0]
        for key in (x_key, y_key):
            member = members.get(f"{key}.npy")
            if member is None:
                found = sorted(n[:-4] for n in members if n.endswith(".npy"))
                raise UploadError(422, f"This .npz has no array {key!r} (found {found}); "
                                  f"save it as numpy.savez(f, {x_key}=..., {y_key}=...).")
            with zf.open(member) as fh:
                try:
                    version = np.lib.format.read_magic(fh)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(fh)
                except ValueError as exc:
                    raise UploadError(422, f"Array {key!r} in this .npz has a bad header: {exc}") from None
                if dtype.hasobject:
                    raise UploadError(
                        422, f"Array {key!r} contains pickled objects; this service never unpickles "
                        "uploads. Save numeric arrays (e.g. X.astype('float32')).")
                _check_declared(shape, dtype.itemsize, key, limits, total)
            with zf.open(member) as fh:
                try:
                    arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
                except ValueError as exc:
                    raise UploadError(422, f"Array {key!r} could not be read: {exc}") from None
    return arrays[x_key], arrays[y_key]


def _read_h5(data: bytes, limits: UploadLimits, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        f = h5py.File(io.BytesIO(data), "r")
    except OSError:
        raise UploadError(422, "This .h5 file could not be opened as HDF5.") from None
    with f:
        total = [0]
        out = []
        for key in (x_key, y_key):
            ds = f.get(key)
            if not isinstance(ds, h5py.Dataset):
                found = sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset))
                raise UploadError(422, f"This .h5 file has no dataset {key!r} (found {found}); "
                                  "name them with the form fields x_key and y_key.")
            if ds.dtype.kind not in "biuf":
                raise UploadError(422, f"Dataset {key!r} has dtype {ds.dtype}; only numeric data is accepted "
                                  "(encode string labels as integers, or upload a CSV).")
            _check_declared(ds.shape, ds.dtype.itemsize, key, limits, total)
            out.append(ds[()])
    return np.asarray(out[0]), np.asarray(out[1])


def _finish_csv(data: bytes, limits: UploadLimits, target: str | None) -> ParsedDataset:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UploadError(422, "This CSV is not UTF-8 text.") from None
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise UploadError(422, "This CSV needs a header row and at least one data row.")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise UploadError(422, "This CSV needs at least one feature column and a label column.")
    if len(rows) - 1 > limits.max_examples:
        raise UploadError(413, f"This CSV has {len(rows) - 1} examples; the limit is {limits.max_examples}.")
    t = len(header) - 1 if target is None else (header.index(target) if target in header else None)
    if t is None:
        raise UploadError(422, f"target column {target!r} is not in the header {header}.")
    n = len(header)
    X = np.empty((len(rows) - 1, n - 1), dtype=np.float64)
    labels = []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != n:
            raise UploadError(422, f"CSV line {i} has {len(row)} fields; the header has {n}.")
        labels.append(row[t].strip())
        for j, col in enumerate(c for k, c in enumerate(row) if k != t):
            try:
                X[i - 2, j] = float(col)
            except ValueError:
                name = [h for k, h in enumerate(header) if k != t][j]
                raise UploadError(
                    422, f"CSV line {i}, column {name!r}: {col.strip()!r} is not a number. Features "
                    "must be numeric (only the target column may hold strings).") from None
    try:
        Y = np.array([float(v) for v in labels], dtype=np.float64)
    except ValueError:
        classes = sorted(set(labels))
        index = {c: k for k, c in enumerate(classes)}
        Y = np.array([index[v] for v in labels], dtype=np.float64).reshape(-1, 1)
        _check_finite(X, Y)
        _check_limits(X, limits)
        return ParsedDataset(X, Y, classes, "binary" if len(classes) == 2 else "integer")
    return _finish_arrays(X, Y, limits)


# --- common checks -------------------------------------------------------------------------

def _check_finite(X: np.ndarray, Y: np.ndarray) -> None:
    for name, a in (("X", X), ("Y", Y)):
        bad = ~np.isfinite(a)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise UploadError(422, f"{name} contains NaN or infinite values (first at example {row}); "
                              "remove or impute them before uploading.")


def _check_limits(X: np.ndarray, limits: UploadLimits) -> None:
    m, n = X.shape
    if m > limits.max_examples:
        raise UploadError(413, f"This dataset has {m} examples; the limit is {limits.max_examples} "
                          "(DNNQ_MAX_EXAMPLES).")
    if n > limits.max_features:
        raise UploadError(413, f"This dataset has {n} features; the limit is {limits.max_features} "
                          "(DNNQ_MAX_FEATURES).")


def _finish_arrays(X: np.ndarray, Y: np.ndarray, limits: UploadLimits) -> ParsedDataset:
    X, Y = np.asarray(X), np.asarray(Y)
    for name, a in (("X", X), ("Y", Y)):
        if a.dtype.kind not in "biuf":
            raise UploadError(422, f"{name} has dtype {a.dtype}; only numeric arrays are accepted "
                              "(encode string labels as integers, or upload a CSV).")
        if a.ndim == 0 or a.shape[0] == 0 or a.size == 0:
            raise UploadError(422, f"{name} is empty (shape {a.shape}); it needs at least one example.")
    if X.shape[0] != Y.shape[0]:
        raise UploadError(
            422, f"X has {X.shape[0]} examples but Y has {Y.shape[0]}: examples are rows (m, ...) and "
            "both arrays need the same first dimension (use layout=features_first for (n_x, m) arrays).")
    X = X.reshape(X.shape[0], -1).astype(_stored_dtype(X.dtype), copy=False)  # image-like (m, h, w, c) -> (m, h*w*c)
    if Y.ndim > 2:
        raise UploadError(422, f"Y must be (m,) or (m, n_outputs); got shape {Y.shape}.")
    Y = Y.reshape(Y.shape[0], -1).astype(np.float64)
    _check_finite(X, Y)
    _check_limits(X, limits)
    Y, classes, kind = labels_from(Y)
    return ParsedDataset(X, Y, classes, kind)


def _stored_dtype(dtype: np.dtype) -> type:
    """float32 where it holds every value exactly (float32 itself, bool and 8/16-bit integers such as
    0..255 pixels: the cat training set is 10 MB as float32 rather than 20 MB as float64), else float64."""
    if dtype == np.float32 or dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize <= 2):
        return np.float32
    return np.float64


def labels_from(Y: np.ndarray) -> tuple[np.ndarray, list | None, str]:
    """Classify numeric labels (m, k): binary 0/1, integer class ids 0..K-1, one-hot, or continuous."""
    integral = bool(np.all(Y == np.round(Y)))
    if Y.shape[1] == 1:
        if integral and np.all((Y == 0) | (Y == 1)):
            return Y, [0, 1], "binary"
        if integral and Y.min() >= 0 and Y.max() < 100_000:
            return Y, list(range(int(Y.max()) + 1)), "integer"
        return Y, None, "continuous"
    if integral and np.all((Y == 0) | (Y == 1)) and np.all(Y.sum(axis=1) == 1):
        return Y, list(range(Y.shape[1])), "onehot"
    return Y, None, "continuous"
