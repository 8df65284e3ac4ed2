"""What every upload format shares: the limits, the error, the result, and the checks on them."""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

__all__ = ["ParsedDataset", "UploadError", "UploadLimits", "check_declared", "finish_arrays", "labels_from"]

RATIO_FLOOR = 64 * 1024 * 1024  # below this many declared bytes the expansion ratio is not applied


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
    max_classes: int = 1000  # DNNQ_MAX_CLASSES: classes / output columns
    max_expansion_ratio: float = 200.0  # declared array bytes / bytes uploaded; not applied under 64 MiB declared


@dataclass
class ParsedDataset:
    X: np.ndarray  # (m, n_features) float32 when exact for the upload's dtype, else float64
    Y: np.ndarray  # (m, n_outputs) float64
    classes: list | None  # original label values, index = class id; None for continuous
    label_kind: str  # binary | integer | onehot | continuous


def source_size(source: bytes | os.PathLike) -> int:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return len(source)
    return os.stat(source).st_size


def open_source(source: bytes | os.PathLike) -> BinaryIO:
    """The upload as a binary file object: its bytes, or the file at its path (the caller closes it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    return open(source, "rb")


def short(exc: BaseException, limit: int = 200) -> str:
    """A library's error message, one line and bounded, for a detail."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def declared_bytes(shape: tuple, itemsize: int) -> int:
    """Python ints: a declared shape whose byte size overflows int64 is still counted exactly."""
    return math.prod(int(d) for d in shape) * int(itemsize)


def check_declared(parts: list[tuple[str, tuple, int]], upload_bytes: int, limits: UploadLimits) -> int:
    """Refuse, before any array is read, what the file declares: the total size and its expansion ratio.

    `parts` is (name, shape, itemsize) per array; returns the declared total in bytes.
    """
    total = 0
    for what, shape, itemsize in parts:
        total += declared_bytes(shape, itemsize)
        if total > limits.max_array_bytes:
            raise UploadError(
                413,
                f"The arrays in this file declare {total} bytes when loaded ({what} {tuple(shape)}); "
                f"the limit is {limits.max_array_bytes}. Upload a smaller dataset.",
            )
    ratio = total / max(upload_bytes, 1)
    if total >= RATIO_FLOOR and ratio > limits.max_expansion_ratio:
        raise UploadError(
            413,
            f"The arrays in this file declare {total} bytes from {upload_bytes} uploaded bytes, an "
            f"expansion of {ratio:.0f}x; the limit is {limits.max_expansion_ratio:g}x (DNNQ_MAX_EXPANSION_RATIO). "
            "Upload the data less compressed, or in a smaller dataset.",
        )
    return total


def check_finite(X: np.ndarray, Y: np.ndarray) -> None:
    for name, a in (("X", X), ("Y", Y)):
        if a.dtype.kind != "f":
            continue  # integers and booleans are always finite
        finite = np.isfinite(a)
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise UploadError(
                422,
                f"{name} contains NaN or infinite values (first at example {row}); "
                "remove or impute them before uploading.",
            )


def check_limits(X: np.ndarray, limits: UploadLimits) -> None:
    m, n = X.shape
    if m > limits.max_examples:
        raise UploadError(
            413, f"This dataset has {m} examples; the limit is {limits.max_examples} (DNNQ_MAX_EXAMPLES)."
        )
    if n > limits.max_features:
        raise UploadError(
            413, f"This dataset has {n} features; the limit is {limits.max_features} (DNNQ_MAX_FEATURES)."
        )


def check_classes(n: int, what: str, limits: UploadLimits) -> None:
    if n > limits.max_classes:
        raise UploadError(
            413,
            f"The labels have {n} {what}; the limit is {limits.max_classes} (DNNQ_MAX_CLASSES). "
            "Merge rare classes, or store a continuous target as non-integer floats.",
        )


def finish_arrays(X: np.ndarray, Y: np.ndarray, limits: UploadLimits) -> ParsedDataset:
    X, Y = np.asarray(X), np.asarray(Y)
    for name, a in (("X", X), ("Y", Y)):
        if a.dtype.kind not in "biuf":
            raise UploadError(
                422,
                f"{name} has dtype {a.dtype}; only numeric arrays are accepted "
                "(encode string labels as integers, or upload a CSV).",
            )
        if a.ndim == 0 or a.shape[0] == 0 or a.size == 0:
            raise UploadError(422, f"{name} is empty (shape {a.shape}); it needs at least one example.")
    if X.shape[0] != Y.shape[0]:
        raise UploadError(
            422,
            f"X has {X.shape[0]} examples but Y has {Y.shape[0]}: examples are rows (m, ...) and "
            "both arrays need the same first dimension (use layout=features_first for (n_x, m) arrays).",
        )
    X = X.reshape(X.shape[0], -1).astype(stored_dtype(X.dtype), copy=False)  # image-like (m, h, w, c) -> (m, h*w*c)
    if Y.ndim > 2:
        raise UploadError(422, f"Y must be (m,) or (m, n_outputs); got shape {Y.shape}.")
    Y = Y.reshape(Y.shape[0], -1).astype(np.float64, copy=False)
    check_finite(X, Y)
    check_limits(X, limits)
    Y, classes, kind = labels_from(Y, limits.max_classes)
    return ParsedDataset(X, Y, classes, kind)


def stored_dtype(dtype: np.dtype) -> type:
    """float32 where it holds every value exactly (float32 itself, bool and 8/16-bit integers such as
    0..255 pixels: the cat training set is 10 MB as float32 rather than 20 MB as float64), else float64."""
    if dtype == np.float32 or dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize <= 2):
        return np.float32
    return np.float64


def labels_from(Y: np.ndarray, max_classes: int = 1000) -> tuple[np.ndarray, list | None, str]:
    """Classify numeric labels (m, k): binary 0/1, integer class ids 0..K-1, one-hot, or continuous.

    More than `max_classes` classes or output columns is a 413 (UploadError), so no model is
    built with an output layer no response could carry.
    """
    if Y.shape[1] > max_classes:
        raise UploadError(
            413,
            f"Y has {Y.shape[1]} output columns; the limit is {max_classes} (DNNQ_MAX_CLASSES). "
            "Upload fewer outputs per example.",
        )
    integral = bool(np.all(np.round(Y) == Y))
    if Y.shape[1] == 1:
        if integral and np.all((Y == 0) | (Y == 1)):
            return Y, [0, 1], "binary"
        if integral and Y.min() >= 0 and Y.max() < 100_000:
            top = int(Y.max())
            if top >= max_classes:
                raise UploadError(
                    413,
                    f"Y holds integer class ids up to {top}, so {top + 1} classes; the limit is "
                    f"{max_classes} (DNNQ_MAX_CLASSES). Renumber the classes 0..K-1 with fewer classes, or "
                    "for a continuous target store non-integer values.",
                )
            return Y, list(range(top + 1)), "integer"
        return Y, None, "continuous"
    if integral and np.all((Y == 0) | (Y == 1)) and np.all(Y.sum(axis=1) == 1):
        return Y, list(range(Y.shape[1])), "onehot"
    return Y, None, "continuous"
