"""One layer forward and backward, each backward step beside its forward.

Cache format (written down once, here):
- linear cache:      ``(A_prev, W, b)`` with A_prev (n_{l-1}, m), W (n_l, n_{l-1}), b (n_l, 1)
- activation cache:  ``Z`` (n_l, m), the pre-activation
- layer cache:       ``((A_prev, W, b), Z)``; layer 1's A_prev is the input A0 = X.
"""

from __future__ import annotations

from .activations import ACTIVATIONS, DERIVATIVES, check_activation
from .backend import Array, get_namespace
from .names import ActivationName

# ((A_prev, W, b), Z), as written down above
LinearCache = tuple[Array, Array, Array]
Cache = tuple[LinearCache, Array]

__all__ = ["Cache", "linear_forward", "linear_backward", "linear_activation_forward", "linear_activation_backward"]


def linear_forward(A_prev: Array, W: Array, b: Array) -> tuple[Array, LinearCache]:
    """Z = W A_prev + b  ->  (Z, (A_prev, W, b))."""
    Z = W @ A_prev + b  # (n_l, m) = (n_l, n_{l-1}) @ (n_{l-1}, m) + (n_l, 1)
    return Z, (A_prev, W, b)


def linear_backward(dZ: Array, cache: LinearCache) -> tuple[Array, Array, Array]:
    """Gradients of the linear step: dW = dZ A_prev^T / m, db = rowsum(dZ) / m, dA_prev = W^T dZ."""
    A_prev, W, b = cache
    xp = get_namespace(dZ, A_prev)
    m = A_prev.shape[1]
    dW = (dZ @ A_prev.T) / m  # (n_l, n_{l-1})
    db = xp.sum(dZ, axis=1, keepdims=True) / m  # (n_l, 1)
    dA_prev = W.T @ dZ  # (n_{l-1}, m)
    return dA_prev, dW, db


def linear_activation_forward(A_prev: Array, W: Array, b: Array, activation: ActivationName) -> tuple[Array, Cache]:
    """A = g(W A_prev + b)  ->  (A, ((A_prev, W, b), Z))."""
    check_activation(activation)
    Z, linear_cache = linear_forward(A_prev, W, b)
    A = ACTIVATIONS[activation](Z)  # (n_l, m)
    return A, (linear_cache, Z)


def linear_activation_backward(dA: Array, cache: Cache, activation: ActivationName) -> tuple[Array, Array, Array]:
    """dZ = dA * g'(Z) at the cached Z (softmax: its Jacobian-vector product), then linear_backward."""
    check_activation(activation)
    linear_cache, Z = cache
    dZ = DERIVATIVES[activation](dA, Z)  # (n_l, m)
    return linear_backward(dZ, linear_cache)
