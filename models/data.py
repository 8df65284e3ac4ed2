"""fit's data checks: features x examples in, examples-first host arrays out, targets checked
against the output (sigmoid: in [0, 1]; softmax: labels or one-hot rows; all finite)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import to_host
from .config import TrainConfig

__all__ = ["examples_first"]


def examples_first(X: Any, Y: Any, cfg: TrainConfig, dtype: np.dtype, role: str) -> tuple[np.ndarray, np.ndarray]:
    """(Xe (m, n_x), Ye (m, n_y)) as C-contiguous host arrays of ``dtype``, from X (n_x, m) and Y
    (n_y, m), or integer labels (m,) for softmax; ``role`` ("training", "validation") names the set
    in the errors."""
    n_x, n_y = cfg.layer_dims[0], cfg.layer_dims[-1]
    X = to_host(X)
    if X.ndim != 2 or X.shape[0] != n_x:
        raise ValueError(
            f"{role} X must be features x examples, shape (n_x={n_x}, m). Got {X.shape}; "
            "pass X.T if your array is examples x features."
        )
    m = X.shape[1]
    if m == 0:
        raise ValueError(f"{role} X has no examples.")
    with np.errstate(over="ignore"):  # a value past dtype's range becomes inf: told apart just below
        Xe = np.ascontiguousarray(X.T, dtype=dtype)  # (m, n_x); no copy for a transposed examples-first array
    if not np.isfinite(Xe).all():
        _raise_not_finite(f"{role} X", X, dtype)
    Y = to_host(Y)
    if cfg.output == "softmax" and (Y.ndim == 1 or Y.shape[0] == 1):
        labels = Y.reshape(-1)
        if labels.shape[0] != m:
            raise ValueError(f"{role} Y has {labels.shape[0]} labels for {m} examples.")
        if (
            not np.all(np.isfinite(labels))
            or np.any(labels != np.round(labels))
            or labels.min() < 0
            or labels.max() >= n_y
        ):
            raise ValueError(
                f"{role} Y must hold integer class labels in [0, {n_y}) for output='softmax' "
                f"with layer_dims[-1]={n_y}. Got values from {labels.min()} to {labels.max()}."
            )
        Ye = np.zeros((m, n_y), dtype=dtype)
        Ye[np.arange(m), labels.astype(np.int64)] = 1  # one-hot, (m, n_y)
        return Xe, Ye
    if Y.ndim == 1 and n_y == 1:
        Y = Y.reshape(1, -1)
    if Y.ndim != 2 or Y.shape != (n_y, m):
        raise ValueError(f"{role} Y must have shape (n_y={n_y}, m={m}) (outputs x examples). Got {Y.shape}.")
    with np.errstate(over="ignore"):
        Ye = np.ascontiguousarray(Y.T, dtype=dtype)  # (m, n_y)
    if not np.isfinite(Ye).all():
        _raise_not_finite(f"{role} Y", Y, dtype)
    if cfg.output == "sigmoid" and (Ye.min() < 0 or Ye.max() > 1):
        raise ValueError(
            f"{role} Y must be in [0, 1] for output='sigmoid' (binary labels). "
            f"Got values from {Ye.min()} to {Ye.max()}."
        )
    if cfg.output == "softmax" and (Ye.min() < 0 or not np.allclose(Ye.sum(axis=1), 1, atol=1e-3)):
        raise ValueError(
            f"{role} Y for output='softmax' must be one-hot (each example's column sums to 1) "
            "or integer labels of shape (m,)."
        )
    return Xe, Ye


def _raise_not_finite(what: str, source: np.ndarray, dtype: np.dtype) -> None:
    """Say whether the values were not finite, or became infinite only in ``dtype`` (float64 data trained
    in float32)."""
    if np.isfinite(source).all():
        raise ValueError(
            f"{what} has values past {dtype.name}'s largest ({np.finfo(dtype).max:.6g}); train in float64 "
            "or rescale the data."
        )
    raise ValueError(f"{what} contains NaN or infinite values; clean or impute them first.")
