"""Parameters laid end to end in one flat array, each a C-contiguous view of it.

fit keeps the parameters, the engine's gradients and the optimizer's state this way, so an optimizer
step is one pass per operation over all of them (one compiled kernel call on the CPU, models/fused.py;
a few launches instead of a few per layer on a GPU), while every per-layer name (W1, dW1, v_W1)
still reads and writes its own part. Works on NumPy and CuPy arrays.
"""

from __future__ import annotations

import math
from typing import Any

from .backend import Array

# [(key, offset, shape), ...]: each parameter's place in the flat array
Layout = list[tuple[str, int, tuple[int, ...]]]

__all__ = ["Layout", "flat_layout", "flat_size", "flat_views", "flatten_params"]


def flat_layout(params: dict[str, Array]) -> Layout:
    """[(key, offset, shape), ...]: the parameters laid end to end, in the dict's order."""
    layout: Layout = []
    offset = 0
    for key, p in params.items():
        layout.append((key, offset, tuple(p.shape)))
        offset += math.prod(p.shape)
    return layout


def flat_size(layout: Layout) -> int:
    """How many elements the flat array of ``layout`` holds."""
    return sum(math.prod(shape) for _, _, shape in layout)


def flat_views(flat: Array, layout: Layout) -> dict[str, Array]:
    """{key: view of ``flat`` shaped as in ``layout``} (C-contiguous views, no copies)."""
    return {key: flat[offset : offset + math.prod(shape)].reshape(shape) for key, offset, shape in layout}


def flatten_params(xp: Any, params: dict[str, Array]) -> tuple[Array, Layout]:
    """(flat array, layout) holding a copy of ``params``, whose entries become views of it."""
    layout = flat_layout(params)
    first = next(iter(params.values()))
    flat = xp.empty(flat_size(layout), dtype=first.dtype)
    views = flat_views(flat, layout)
    for key, view in views.items():
        view[...] = params[key]
        params[key] = view
    return flat, layout
