"""Activations and their derivatives, chosen by name.

``ACTIVATIONS[name](Z) -> A`` and ``DERIVATIVES[name](dA, Z) -> dZ`` (the chain rule through the
activation, evaluated at the cached pre-activation ``Z``). Arrays are features x examples
``(n_l, m)``; softmax normalises over axis 0 (the features of one example). Only array-API
standard functions are used, so NumPy, CuPy and array_api_strict arrays all work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .backend import Array, get_namespace
from .names import ACTIVATION_NAMES, HIDDEN_ACTIVATIONS, ActivationName, HiddenActivationName, check_table

__all__ = [
    "ACTIVATIONS",
    "DERIVATIVES",
    "INPLACE_ACTIVATIONS",
    "INPLACE_DERIVATIVES",
    "LEAKY_SLOPE",
    "sigmoid",
    "relu",
    "leaky_relu",
    "tanh",
    "softmax",
    "linear",
]

LEAKY_SLOPE = 0.01  # leaky_relu(Z) = LEAKY_SLOPE * Z where Z <= 0 (also the ONNX export's LeakyRelu alpha)


def sigmoid(Z: Array) -> Array:
    xp = get_namespace(Z)
    return 1.0 / (1.0 + xp.exp(-Z))


def sigmoid_backward(dA: Array, Z: Array) -> Array:
    s = sigmoid(Z)
    return dA * s * (1.0 - s)


def relu(Z: Array) -> Array:
    xp = get_namespace(Z)
    return xp.where(Z > 0, Z, xp.zeros_like(Z))


def relu_backward(dA: Array, Z: Array) -> Array:
    xp = get_namespace(dA, Z)
    return xp.where(Z > 0, dA, xp.zeros_like(dA))  # derivative 0 where Z <= 0


def leaky_relu(Z: Array) -> Array:
    xp = get_namespace(Z)
    return xp.where(Z > 0, Z, LEAKY_SLOPE * Z)


def leaky_relu_backward(dA: Array, Z: Array) -> Array:
    xp = get_namespace(dA, Z)
    return xp.where(Z > 0, dA, LEAKY_SLOPE * dA)


def tanh(Z: Array) -> Array:
    xp = get_namespace(Z)
    return xp.tanh(Z)


def tanh_backward(dA: Array, Z: Array) -> Array:
    xp = get_namespace(Z)
    t = xp.tanh(Z)
    return dA * (1.0 - t * t)


def softmax(Z: Array) -> Array:
    """Column-wise softmax, stable: exp(Z - max) / sum(exp(Z - max)) over axis 0."""
    xp = get_namespace(Z)
    E = xp.exp(Z - xp.max(Z, axis=0, keepdims=True))  # (n_L, m)
    return E / xp.sum(E, axis=0, keepdims=True)


def softmax_backward(dA: Array, Z: Array) -> Array:
    """Jacobian-vector product of softmax: dZ_i = A_i (dA_i - sum_k dA_k A_k), per example."""
    xp = get_namespace(dA, Z)
    A = softmax(Z)
    return A * (dA - xp.sum(dA * A, axis=0, keepdims=True))


def linear(Z: Array) -> Array:
    return Z


def linear_backward(dA: Array, Z: Array) -> Array:
    return dA


ACTIVATIONS: dict[ActivationName, Callable[[Any], Any]] = {
    "sigmoid": sigmoid,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "tanh": tanh,
    "softmax": softmax,
    "linear": linear,
}

DERIVATIVES: dict[ActivationName, Callable[[Any, Any], Any]] = {
    "sigmoid": sigmoid_backward,
    "relu": relu_backward,
    "leaky_relu": leaky_relu_backward,
    "tanh": tanh_backward,
    "softmax": softmax_backward,
    "linear": linear_backward,
}


check_table("ACTIVATIONS", ACTIVATION_NAMES, ACTIVATIONS)
check_table("DERIVATIVES", ACTIVATION_NAMES, DERIVATIVES)


# --- in place, for fit's engine (models/engine.py): NumPy/CuPy ``out=`` calls into its buffers --------
# ``INPLACE_ACTIVATIONS[name](xp, Z, zeros)`` overwrites Z with g(Z); ``INPLACE_DERIVATIVES[name](xp,
# dA, H, mask)`` overwrites dA with dZ = dA * g'(Z), reading g'(Z) from H = g(Z) (each hidden
# activation's derivative is a function of its output). ``zeros`` (zeros like Z) and ``mask`` (bool,
# like H) are buffers the engine allocates once; only relu uses them.


def relu_(xp: Any, Z: Any, zeros: Any) -> None:
    xp.maximum(Z, zeros, out=Z)  # against an array of zeros: maximum with a scalar 0 is slower in NumPy


def relu_backward_(xp: Any, dA: Any, H: Any, mask: Any) -> None:
    xp.greater(H, 0, out=mask)
    dA *= mask  # relu' = 0 where Z <= 0, i.e. where H == 0


def leaky_relu_(xp: Any, Z: Any, zeros: Any) -> None:
    xp.maximum(Z, LEAKY_SLOPE * Z, out=Z)


def leaky_relu_backward_(xp: Any, dA: Any, H: Any, mask: Any) -> None:
    dA[...] = xp.where(H > 0, dA, LEAKY_SLOPE * dA)  # H > 0 exactly where Z > 0


def tanh_(xp: Any, Z: Any, zeros: Any) -> None:
    xp.tanh(Z, out=Z)


def tanh_backward_(xp: Any, dA: Any, H: Any, mask: Any) -> None:
    dA *= 1.0 - H * H  # tanh' = 1 - tanh^2


def sigmoid_(xp: Any, Z: Any, zeros: Any) -> None:
    xp.negative(Z, out=Z)
    xp.exp(Z, out=Z)
    Z += 1.0
    xp.reciprocal(Z, out=Z)  # 1 / (1 + exp(-Z))


def sigmoid_backward_(xp: Any, dA: Any, H: Any, mask: Any) -> None:
    dA *= H * (1.0 - H)  # sigmoid' = s (1 - s)


INPLACE_ACTIVATIONS: dict[HiddenActivationName, Callable[[Any, Any, Any], None]] = {
    "relu": relu_,
    "leaky_relu": leaky_relu_,
    "tanh": tanh_,
    "sigmoid": sigmoid_,
}

INPLACE_DERIVATIVES: dict[HiddenActivationName, Callable[[Any, Any, Any, Any], None]] = {
    "relu": relu_backward_,
    "leaky_relu": leaky_relu_backward_,
    "tanh": tanh_backward_,
    "sigmoid": sigmoid_backward_,
}

check_table("INPLACE_ACTIVATIONS", HIDDEN_ACTIVATIONS, INPLACE_ACTIVATIONS)
check_table("INPLACE_DERIVATIVES", HIDDEN_ACTIVATIONS, INPLACE_DERIVATIVES)


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}. Use one of {sorted(ACTIVATIONS)}.")
