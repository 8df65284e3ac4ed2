"""Costs by name, and the gradient of each with respect to the output ``AL``.

All take ``AL`` and ``Y`` of shape ``(n_y, m)`` and average over the ``m`` examples:

- ``binary_crossentropy``:  -1/m * sum(Y log AL + (1 - Y) log(1 - AL))   (the textbook, no clipping)
- ``categorical_crossentropy``: -1/m * sum(Y log AL)                     (Y one-hot, columns sum to 1)
- ``mse``: 1/(2m) * sum((AL - Y)^2), summed over outputs, averaged over examples; the 1/2 makes
  its gradient exactly AL - Y.  fit() uses this same definition.

``LOSS_GRADIENTS[name](AL, Y) -> dAL`` is the derivative of ONE example's loss; the 1/m enters in
``linear_backward`` (dW = dZ A_prev^T / m), as in the textbook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .backend import Array, get_namespace
from .names import LOSS_NAMES, OUTPUTS, LossName, check_table

__all__ = ["LOSSES", "LOSS_GRADIENTS", "OUTPUT_LOSS", "l2_penalty"]


def binary_crossentropy(AL: Array, Y: Array) -> Array:
    xp = get_namespace(AL, Y)
    m = Y.shape[-1]
    return -xp.sum(Y * xp.log(AL) + (1.0 - Y) * xp.log(1.0 - AL)) / m


def binary_crossentropy_grad(AL: Array, Y: Array) -> Array:
    return -(Y / AL - (1.0 - Y) / (1.0 - AL))


def categorical_crossentropy(AL: Array, Y: Array) -> Array:
    xp = get_namespace(AL, Y)
    m = Y.shape[-1]
    return -xp.sum(Y * xp.log(AL)) / m


def categorical_crossentropy_grad(AL: Array, Y: Array) -> Array:
    return -(Y / AL)


def mse(AL: Array, Y: Array) -> Array:
    xp = get_namespace(AL, Y)
    m = Y.shape[-1]
    D = AL - Y
    return xp.sum(D * D) / (2.0 * m)


def mse_grad(AL: Array, Y: Array) -> Array:
    return AL - Y


LOSSES: dict[LossName, Callable[[Any, Any], Any]] = {
    "binary_crossentropy": binary_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "mse": mse,
}

LOSS_GRADIENTS: dict[LossName, Callable[[Any, Any], Any]] = {
    "binary_crossentropy": binary_crossentropy_grad,
    "categorical_crossentropy": categorical_crossentropy_grad,
    "mse": mse_grad,
}

# The loss that goes with each output activation (fit() always uses this pairing).
OUTPUT_LOSS: Mapping[str, LossName] = {
    "sigmoid": "binary_crossentropy",
    "softmax": "categorical_crossentropy",
    "linear": "mse",
}
check_table("LOSSES", LOSS_NAMES, LOSSES)
check_table("LOSS_GRADIENTS", LOSS_NAMES, LOSS_GRADIENTS)
check_table("OUTPUT_LOSS", OUTPUTS, OUTPUT_LOSS)


def l2_penalty(parameters: dict[str, Array], l2: float, m: int) -> Array:
    """lambda/(2m) * sum_l ||W_l||_F^2 (biases are not regularised)."""
    total = 0.0
    for key, W in parameters.items():
        if key.startswith("W"):
            xp = get_namespace(W)
            total = total + xp.sum(W * W)
    return l2 / (2.0 * m) * total


def check_loss(name: str) -> None:
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Use one of {sorted(LOSSES)}.")
