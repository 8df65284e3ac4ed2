"""warm_up(): pay fit's one-time costs in a process before its first job does.

A process's first fit of a network big enough for the compiled kernels (models/fused.py) imports
Numba and loads or compiles each kernel for each dtype it meets, and starts the BLAS thread pool;
later fits pay none of it (docs/perf.md, "Gram path, warm-up and the PyTorch reference"). Training
a few tiny networks through every optimizer, output and dtype on the CPU takes those costs in one
go. It never touches CuPy or CUDA, so it may run in a worker's parent before the pool forks.
"""

from __future__ import annotations

import time

import numpy as np

from .config import TrainConfig
from .fused import MIN_ELEMENTS
from .names import DTYPES, OPTIMIZER_NAMES, OptimizerName, OutputName
from .training import fit

__all__ = ["warm_up"]

# the smallest network the engine's compiled kernels serve: 256 * 128 + 128 * 10 weights > MIN_ELEMENTS
_DIMS = [256, 128, 10]
assert _DIMS[0] * _DIMS[1] + _DIMS[1] * _DIMS[2] >= MIN_ELEMENTS


def warm_up() -> float:
    """Train one epoch of tiny networks (every optimizer with a softmax output, and a sigmoid output,
    in both dtypes, shuffled mini-batches: the paths whose kernels compile) and return the seconds."""
    t0 = time.perf_counter()
    m = 32
    X = np.random.default_rng(0).random((_DIMS[0], m))
    labels = np.arange(m) % _DIMS[-1]
    runs: list[tuple[OptimizerName, OutputName]] = [(name, "softmax") for name in OPTIMIZER_NAMES]
    for dtype in DTYPES:
        for optimizer, output in [*runs, ("gd", "sigmoid")]:
            Y = labels if output == "softmax" else np.eye(_DIMS[-1])[labels].T  # (10, m) 0/1 targets
            cfg = TrainConfig(
                layer_dims=_DIMS,
                output=output,
                optimizer=optimizer,
                learning_rate=1e-3,
                epochs=1,
                batch_size=16,
                dtype=dtype,
                device="cpu",
            )
            fit(X, Y, cfg, path="textbook")
    return time.perf_counter() - t0
