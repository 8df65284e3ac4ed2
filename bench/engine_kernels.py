"""The engine's small choices, timed: ``python -m bench.engine_kernels`` (a few seconds; CPU only).

Each line is one choice made in models/engine.py, models/optimizers.py or models/fused.py, timed
against the alternative it replaced, on workload A's shapes (784-256-128-10, batch 256, float32;
docs/perf.md, "Engine kernels"). Medians of repeated runs; the compiled kernels need Numba.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import numpy as np

BATCH, N_X, N_H = 256, 784, 256
LAYERS = [784, 256, 128, 10]
STEPS = 60_000 // BATCH + 1  # steps in one epoch of workload A


def line(
    label: str,
    chosen: Callable[[], object],
    other: Callable[[], object],
    unit: str,
    scale: float,
    *,
    number: int = 20,
    repeat: int = 15,
    times: int = 1,
) -> None:
    """Median seconds of one call (times ``times``) of each, timed in alternation so that a busy
    machine slows both alike."""
    chosen(), other()  # warm-up (and Numba's compile or cache load)
    a, b = [], []
    for _ in range(repeat):
        a.append(timeit.timeit(chosen, number=number) / number)
        b.append(timeit.timeit(other, number=number) / number)
    ours, theirs = times * float(np.median(a)), times * float(np.median(b))
    print(f"  {label:72} {ours * scale:8.3f} {theirs * scale:8.3f} {unit:3} x{theirs / ours:5.2f}")


def main() -> int:
    from dnnq.models import fused
    from dnnq.models.optimizers import Adam

    rng = np.random.default_rng(0)
    f32 = np.float32
    print(f"  {'choice: ours vs the alternative':72} {'ours':>8} {'other':>8} {'':3} gain")

    A = rng.standard_normal((BATCH, N_X), dtype=f32)
    W = rng.standard_normal((N_H, N_X), dtype=f32)
    out_ex, out_feat = np.empty((BATCH, N_H), f32), np.empty((N_H, BATCH), f32)
    AT = np.ascontiguousarray(A.T)
    line(
        "A @ W.T (examples first) vs W @ A.T (features first), 256x784x256",
        lambda: np.matmul(A, W.T, out=out_ex),
        lambda: np.matmul(W, AT, out=out_feat),
        "ms",
        1e3,
    )

    Z = rng.standard_normal((BATCH, N_H), dtype=f32)
    zeros = np.zeros_like(Z)
    line(
        "relu: maximum(Z, zeros array) vs maximum(Z, 0), 256x256",
        lambda: np.maximum(Z, zeros, out=Z),
        lambda: np.maximum(Z, 0, out=Z),
        "us",
        1e6,
    )

    dZ = rng.standard_normal((BATCH, N_H), dtype=f32)
    ones, db = np.ones(BATCH, f32), np.empty(N_H, f32)
    line(
        "db: ones @ dZ (gemv) vs dZ.sum(axis=0), 256x256",
        lambda: np.matmul(ones, dZ, out=db),
        lambda: np.sum(dZ, axis=0, out=db),
        "us",
        1e6,
    )

    p, g = rng.standard_normal((N_H, N_X), dtype=f32), rng.standard_normal((N_H, N_X), dtype=f32)
    tmp = np.empty_like(p)

    def two_pass() -> None:
        np.multiply(g, 0.1, out=tmp)
        np.subtract(p, tmp, out=p)

    line(
        "gd step: p -= g (lr folded into backprop) vs p -= lr * g, 256x784",
        lambda: np.subtract(p, g, out=p),
        two_pass,
        "us",
        1e6,
    )

    if not fused.available():
        print("  (Numba is not installed: the compiled kernels' lines are left out)")
        return 0
    n_params = sum(LAYERS[l] * LAYERS[l - 1] + LAYERS[l] for l in range(1, len(LAYERS)))
    flat = [rng.standard_normal(n_params, dtype=f32) * 0.01 for _ in range(2)]
    opt_seq, opt_fused = Adam(1e-3), Adam(1e-3)
    for opt in (opt_seq, opt_fused):
        opt.bind_flat(flat[0].copy(), [("W", 0, (n_params,))])
        opt.t = 1  # bias corrections of the first step (t = 0 would divide by zero)
    params_seq, params_fused = flat[0].copy(), flat[0].copy()
    line(
        f"adam step: compiled kernel vs NumPy sequence, {n_params} params, an epoch",
        lambda: opt_fused._fused_step(params_fused, flat[1], *opt_fused._flat.values()),
        lambda: opt_seq._step(params_seq, flat[1], opt_seq._flat_tmp, *opt_seq._flat.values()),
        "s",
        1,
        times=STEPS,
    )

    H = np.maximum(rng.standard_normal((BATCH, N_H), dtype=f32), 0)
    dA = rng.standard_normal((BATCH, N_H), dtype=f32)
    mask = np.empty(dA.shape, bool)

    def relu_backward_numpy() -> None:
        np.greater(H, 0, out=mask)
        np.multiply(dA, mask, out=dA)

    line(
        "relu backward: compiled dA *= (H > 0) vs NumPy greater + multiply, 256x256",
        lambda: fused.relu_backward_(dA, H),
        relu_backward_numpy,
        "us",
        1e6,
    )

    X = rng.random((60_000, N_X), dtype=f32)
    perm = rng.permutation(X.shape[0])
    xb = np.empty((BATCH, N_X), f32)

    def gather(kernel: bool) -> None:
        for s in range(0, X.shape[0], BATCH):
            idx = perm[s : s + BATCH]
            if kernel:
                fused.take_rows_(X, idx, xb[: idx.shape[0]])
            else:
                np.take(X, idx, axis=0, out=xb[: idx.shape[0]], mode="wrap")

    line(
        "row gather of workload A's X (60000x784), an epoch: kernel vs np.take",
        lambda: gather(True),
        lambda: gather(False),
        "s",
        1,
        number=1,
        repeat=7,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
