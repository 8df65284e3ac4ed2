"""Fused CPU kernels on NumPy arrays, compiled with Numba: the optimizer steps, and the engine's
elementwise work around the matrix products (bias + relu, relu's backward mask, the softmax
output and its gradient, the mini-batch row gather).

NumPy runs Adam's ``p -= lr * v_hat / (sqrt(s_hat) + eps)`` as a dozen passes over memory, each
streaming the arrays through the cache again; a kernel makes one pass (figures and the command
that reproduces them: docs/perf.md, "Engine kernels").

Bit-identical by construction: each kernel performs the same IEEE operations, in the same order,
on the same dtype as the optimizer's NumPy/CuPy sequence (``_step`` in models/optimizers.py).
Constants are cast to the array's dtype first (NumPy casts a Python float operand to a float32
array's dtype; Numba would otherwise promote to float64), and there is no ``fastmath`` (so no
FMA contraction, no reassociation). tests/models/test_fused.py checks equality bit for bit, so
whether a kernel or the NumPy sequence runs never changes a result.

Serial kernels (``parallel=False``), on purpose: Numba's threading layers either abort a process
that forks after using them (OpenMP; Celery's prefork pool forks) or cost more per call than a
second core saves on a network of workload A's size (docs/perf.md). ``nogil`` makes them safe to
call from any thread. Used only where it pays: arrays of at least
``MIN_ELEMENTS`` elements (a call costs microseconds; tiny jobs never import Numba), and only
when Numba imports and compiles; otherwise the NumPy sequence runs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: Numba compiles from the values it is called with, not from these
    from numpy.typing import DTypeLike, NDArray

    from .backend import Array

    Floats = NDArray[np.floating[Any]]
    Ints = NDArray[np.integer[Any]]
    Scalar = np.floating[Any]  # a constant already cast to the arrays' dtype

__all__ = [
    "MIN_ELEMENTS",
    "available",
    "set_enabled",
    "wanted",
    "engine_wanted",
    "momentum_",
    "rmsprop_",
    "adam_",
    "bias_relu_",
    "relu_backward_",
    "softmax_head_",
    "softmax_tail_",
    "output_grad_",
    "take_rows_",
]

MIN_ELEMENTS = 1 << 15  # below this a kernel call's overhead outweighs its gain

_compile_lock = threading.Lock()
_kernels: dict[str, Any] = {}  # name -> compiled kernel; stays empty when Numba is unusable
_compiled = False  # whether _compile ran in this process
_enabled = True  # tests switch the kernels off to compare against the NumPy sequences


def set_enabled(flag: bool) -> None:
    """Turn the kernels on or off for this process (results are the same either way)."""
    global _enabled
    _enabled = bool(flag)


def _compile() -> dict[str, Any]:
    try:
        import numba
    except ImportError:
        return {}
    # error_model="numpy": x / 0 is IEEE inf/nan as in NumPy, and no per-element zero check
    # (the "python" model raises instead, and its branch stops the loop from vectorising)
    jit = numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")

    @jit
    def momentum_(p: Floats, g: Floats, v: Floats, beta: Scalar, one_minus_beta: Scalar, lr: Scalar) -> None:
        for i in range(p.shape[0]):
            vi = v[i] * beta + g[i] * one_minus_beta
            v[i] = vi
            p[i] = p[i] - vi * lr

    @jit
    def rmsprop_(
        p: Floats, g: Floats, s: Floats, beta2: Scalar, one_minus_beta2: Scalar, eps: Scalar, lr: Scalar
    ) -> None:
        for i in range(p.shape[0]):
            gi = g[i]
            si = s[i] * beta2 + (gi * gi) * one_minus_beta2
            s[i] = si
            p[i] = p[i] - (gi / (np.sqrt(si) + eps)) * lr

    @jit
    def adam_(
        p: Floats,
        g: Floats,
        v: Floats,
        s: Floats,
        beta1: Scalar,
        one_minus_beta1: Scalar,
        beta2: Scalar,
        one_minus_beta2: Scalar,
        sqrt_c2: Scalar,
        eps: Scalar,
        lr_over_c1: Scalar,
    ) -> None:
        for i in range(p.shape[0]):
            gi = g[i]
            vi = v[i] * beta1 + gi * one_minus_beta1
            si = s[i] * beta2 + (gi * gi) * one_minus_beta2
            v[i] = vi
            s[i] = si
            p[i] = p[i] - (vi / (np.sqrt(si) / sqrt_c2 + eps)) * lr_over_c1

    # --- the engine's elementwise steps (models/engine.py), each one pass instead of two to five ---

    @jit
    def bias_relu_(Z: Floats, b: Floats) -> None:
        # Z += b (a row vector); Z = maximum(Z, 0) as NumPy's vector loop does it: NaN stays NaN,
        # and -0.0 becomes +0.0 (vmaxps hands back the second operand, the zero, when both are zero)
        for i in range(Z.shape[0]):
            for j in range(Z.shape[1]):
                z = Z[i, j] + b[j]
                Z[i, j] = z if (z > 0 or z != z) else 0

    @jit
    def relu_backward_(dA: Floats, H: Floats) -> None:
        # dA *= (H > 0) as NumPy does it: the mask cast to 1.0 / 0.0 and multiplied in, so times 1
        # leaves dA as it is and times 0 gives the same signed zero, or NaN for inf and NaN. A select
        # and a multiply on every element, branch-free, so the loop vectorises (a branch would not)
        one, zero = dA.dtype.type(1), dA.dtype.type(0)
        for i in range(dA.shape[0]):
            for j in range(dA.shape[1]):
                dA[i, j] = dA[i, j] * (one if H[i, j] > 0 else zero)

    @jit
    def softmax_head_(Z: Floats, labels: Ints, Zs: Floats) -> int:
        # per row: m = max (NaN if any), Zs = Z - m, and whether argmax (the first maximum, or the
        # first NaN, as NumPy's) is the label; returns how many rows were right
        correct = 0
        for i in range(Z.shape[0]):
            m = Z[i, 0]
            k = 0
            if m == m:
                for j in range(1, Z.shape[1]):
                    z = Z[i, j]
                    if z > m:
                        m, k = z, j
                    elif z != z:
                        m, k = z, j
                        break
            for j in range(Z.shape[1]):
                Zs[i, j] = Z[i, j] - m
            if k == labels[i]:
                correct += 1
        return correct

    @jit
    def softmax_tail_(AL: Floats, S: Floats, logS: Floats, Zs: Floats) -> None:
        # AL /= S (softmax); Zs -= log S (log-softmax); S, logS: (B,) row sums and their logs
        for i in range(AL.shape[0]):
            s, ls = S[i], logS[i]
            for j in range(AL.shape[1]):
                AL[i, j] = AL[i, j] / s
                Zs[i, j] = Zs[i, j] - ls

    @jit
    def output_grad_(AL: Floats, Y: Floats, c: Scalar, dZ: Floats) -> None:
        # dZ = AL - Y; dZ *= c
        for i in range(AL.shape[0]):
            for j in range(AL.shape[1]):
                dZ[i, j] = (AL[i, j] - Y[i, j]) * c

    @jit
    def take_rows_(src: Floats, idx: Ints, out: Floats) -> None:
        # out[r] = src[idx[r]], eight rows at a time: eight streams from memory in flight instead
        # of one (np.take copies row by row); a copy, so exact
        n, cols = idx.shape[0], src.shape[1]
        r = 0
        while r + 8 <= n:
            i0, i1, i2, i3 = idx[r], idx[r + 1], idx[r + 2], idx[r + 3]
            i4, i5, i6, i7 = idx[r + 4], idx[r + 5], idx[r + 6], idx[r + 7]
            for j in range(cols):
                out[r, j] = src[i0, j]
                out[r + 1, j] = src[i1, j]
                out[r + 2, j] = src[i2, j]
                out[r + 3, j] = src[i3, j]
                out[r + 4, j] = src[i4, j]
                out[r + 5, j] = src[i5, j]
                out[r + 6, j] = src[i6, j]
                out[r + 7, j] = src[i7, j]
            r += 8
        while r < n:
            i0 = idx[r]
            for j in range(cols):
                out[r, j] = src[i0, j]
            r += 1

    kernels = {
        "momentum_": momentum_,
        "rmsprop_": rmsprop_,
        "adam_": adam_,
        "bias_relu_": bias_relu_,
        "relu_backward_": relu_backward_,
        "softmax_head_": softmax_head_,
        "softmax_tail_": softmax_tail_,
        "output_grad_": output_grad_,
        "take_rows_": take_rows_,
    }
    try:  # compile (or load from Numba's on-disk cache) now, so a broken toolchain falls back at once
        one = np.ones(2, np.float32)
        momentum_(one.copy(), one, one.copy(), one[0], one[0], one[0])
    except Exception:
        return {}
    return kernels


def available() -> bool:
    """Whether the compiled kernels can run in this process (compiles them on the first call)."""
    global _compiled
    if not _compiled:
        with _compile_lock:
            if not _compiled:
                _kernels.update(_compile())
                _compiled = True
    return bool(_kernels)


def wanted(*arrays: Array) -> bool:
    """True when every array is a C-contiguous 1-D NumPy float array, the first has at least
    MIN_ELEMENTS elements, and the kernels are enabled and available."""
    if not _enabled or not arrays:
        return False
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.ndim != 1 or not a.flags.c_contiguous or a.dtype.kind != "f":
            return False
    return arrays[0].size >= MIN_ELEMENTS and available()


def engine_wanted(xp: Any, dtype: DTypeLike, n_params: int) -> bool:
    """Whether fit's engine should use the elementwise kernels below for a whole run: NumPy arrays
    of a float dtype, a network of at least MIN_ELEMENTS parameters (smaller jobs never import
    Numba), and the kernels enabled and available. The engine's buffers are C-contiguous, and the
    kernels take them as they come (2-D, rows of examples)."""
    return _enabled and xp is np and np.dtype(dtype).kind == "f" and n_params >= MIN_ELEMENTS and available()


# Each kernel below runs only where wanted() (optimizers) or engine_wanted() (engine) said yes;
# otherwise the NumPy/CuPy sequence runs.


def momentum_(p: Floats, g: Floats, v: Floats, beta: float, lr: float) -> None:
    """v = beta v + (1 - beta) g; p -= lr v."""
    t = p.dtype.type
    _kernels["momentum_"](p, g, v, t(beta), t(1.0 - beta), t(lr))


def rmsprop_(p: Floats, g: Floats, s: Floats, beta2: float, eps: float, lr: float) -> None:
    """s = beta2 s + (1 - beta2) g^2; p -= lr g / (sqrt(s) + eps)."""
    t = p.dtype.type
    _kernels["rmsprop_"](p, g, s, t(beta2), t(1.0 - beta2), t(eps), t(lr))


def adam_(
    p: Floats,
    g: Floats,
    v: Floats,
    s: Floats,
    beta1: float,
    beta2: float,
    eps: float,
    sqrt_c2: float,
    lr_over_c1: float,
) -> None:
    """v = beta1 v + (1 - beta1) g; s = beta2 s + (1 - beta2) g^2;
    p -= lr_over_c1 v / (sqrt(s) / sqrt_c2 + eps), with sqrt_c2 = sqrt(1 - beta2^t) and
    lr_over_c1 = lr / (1 - beta1^t): lr v_corrected / (sqrt(s_corrected) + eps)."""
    t = p.dtype.type
    _kernels["adam_"](p, g, v, s, t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(sqrt_c2), t(eps), t(lr_over_c1))


# The engine's kernels: arguments are C-contiguous NumPy arrays of one float dtype (labels, idx: integers).


def bias_relu_(Z: Floats, b: Floats) -> None:
    """Z += b (b: (n,), one value per column); Z = maximum(Z, 0). Z: (B, n), in place."""
    _kernels["bias_relu_"](Z, b)


def relu_backward_(dA: Floats, H: Floats) -> None:
    """dA *= (H > 0), in place; H = relu(Z), so H > 0 exactly where Z > 0."""
    _kernels["relu_backward_"](dA, H)


def softmax_head_(Z: Floats, labels: Ints, Zs: Floats) -> int:
    """Zs = Z - max(Z, axis=1); returns count_nonzero(argmax(Z, axis=1) == labels)."""
    return int(_kernels["softmax_head_"](Z, labels, Zs))


def softmax_tail_(AL: Floats, S: Floats, logS: Floats, Zs: Floats) -> None:
    """AL /= S[:, None]; Zs -= logS[:, None] (S: row sums of AL = exp(Zs), logS = log(S))."""
    _kernels["softmax_tail_"](AL, S, logS, Zs)


def output_grad_(AL: Floats, Y: Floats, c: float, dZ: Floats) -> None:
    """dZ = AL - Y; dZ *= c (c cast to the arrays' dtype first, as NumPy casts a Python float)."""
    _kernels["output_grad_"](AL, Y, AL.dtype.type(c), dZ)


def take_rows_(src: Floats, idx: Ints, out: Floats) -> None:
    """out[:] = src[idx] for a 2-D src and 1-D integer idx in range."""
    _kernels["take_rows_"](src, idx, out)
